//! A traffic generator for load tests: the tools object's `xdplb_gen` program run with BPF_PROG_RUN
//! live frames, so each run pushes frames out of a test interface at kernel speed. Every frame
//! starts from the template's headers; packet n belongs to flow n mod `flows` (see
//! lb-ebpf-tools/src/generator.rs).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use lb_common::maps as m;
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    iface,
};

use crate::{fib::xdp_md, netns::Netns, tools::Tools};

/// Frames per live-frames batch (the kernel's page pool recycles them).
const BATCH: u32 = 64;

/// The kernel refused live frames with EPERM: the environment lacks a capability they need
/// (seen in a sandbox whose bounding set had no CAP_SYS_RESOURCE; the same call with the
/// project's earlier releases failed alike). Load tests skip, saying so, instead of failing on
/// the environment; wherever live frames work, they run in full.
#[derive(Debug)]
pub struct LiveFramesRefused;

impl std::fmt::Display for LiveFramesRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the kernel refused BPF_PROG_RUN live frames (EPERM): this environment lacks a \
             capability they need (CAP_SYS_RESOURCE was missing where this was seen)",
        )
    }
}

impl std::error::Error for LiveFramesRefused {}

/// Whether `e` is (or was caused by) `LiveFramesRefused`.
pub fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<LiveFramesRefused>())
}

pub struct Generator {
    /// The load balancer's object, for its pass program (`attach_pass`).
    dp: DataPath,
    tools: Tools,
    cpu: Option<usize>,
}

impl Generator {
    pub fn new() -> Result<Generator> {
        Ok(Generator {
            dp: DataPath::load(&LoadOptions::minimal())?,
            tools: Tools::load()?,
            cpu: None,
        })
    }

    /// Runs every later `send` on this CPU only (benchmarks: the frames' whole path through
    /// veth NAPI then runs on the CPU that sends them).
    pub fn pin(&mut self, cpu: usize) {
        self.cpu = Some(cpu);
    }

    /// Attaches the pass program to `iface` in `ns`: the peer of the interface the generator
    /// sends out of must have one for the frames to be delivered.
    pub fn attach_pass(&mut self, ns: &Netns, iface: &str) -> Result<()> {
        ns.run(|| {
            self.dp
                .attach_pass(iface, lb_userspace::datapath::AttachMode::Native)
        })??;
        Ok(())
    }

    /// Sends `packets` frames built from `template` (an IPv4 UDP frame; see
    /// `Tools::set_generator`) out of `iface` in `ns`, spread over `flows` flows whose
    /// sources start at `first_src`. The interface's peer needs an XDP program.
    pub fn send(
        &mut self,
        ns: &Netns,
        iface: &str,
        template: &[u8],
        flows: u32,
        first_src: Ipv4Addr,
        packets: u32,
    ) -> Result<()> {
        self.tools.set_generator(flows, first_src, template)?;
        let cpu = self.cpu;
        let prog = self.tools.program(m::PROG_GEN)?;
        ns.run(|| -> Result<()> {
            if let Some(cpu) = cpu {
                pin_thread(cpu)?;
            }
            let ctx = xdp_md(iface::index(iface)?, template.len());
            // Live frames report no verdict: what arrived is counted by the receiver.
            let run = prog.test_run(TestRunOptions {
                data_in: Some(template),
                ctx_in: Some(&ctx),
                repeat: packets,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            });
            match run {
                Ok(_) => Ok(()),
                Err(e) if eperm(&e) => Err(LiveFramesRefused.into()),
                Err(e) => Err(e.into()),
            }
        })?
    }
}

fn eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(1)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Restricts the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
