//! Watching the data path: the switch word (`lb_common::trace::GLOBAL_WATCH`, in the program's
//! own `.bss.watch` section) and what the data path reports while it is on: aya-log records
//! (`xdplb debug on`) and trace events (`xdplb trace`).

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf};
use aya_log::EbpfLogger;
use lb_common::{
    maps as m,
    trace::{self as t, TraceBudget, TraceEvent},
};

use super::{map_err, nr_cpus, put_in_jump_table, DataPath, DataPathError};

impl DataPath {
    /// The switch word: `WATCH_*` bits.
    pub fn watch_bits(&self) -> Result<u32, DataPathError> {
        let a: Array<_, u32> = self.typed_ref(t::WATCH_SECTION)?;
        a.get(&0, 0).map_err(map_err(t::WATCH_SECTION))
    }

    fn set_watch_bit(&mut self, bit: u32, on: bool) -> Result<(), DataPathError> {
        let before = self.watch_bits()?;
        let bits = if on { before | bit } else { before & !bit };
        if before == 0 && bits != 0 {
            self.clear_watch_record()?;
        }
        let mut a: Array<_, u32> = self.typed(t::WATCH_SECTION)?;
        a.set(0, bits, 0).map_err(map_err(t::WATCH_SECTION))
    }

    /// Empties each CPU's record of the packet being watched: a packet cut off by switching
    /// watching off left its facts there, which the next watched packet must not inherit.
    fn clear_watch_record(&mut self) -> Result<(), DataPathError> {
        let failed = |reason: String| DataPathError::Map {
            map: t::TRACE_NOW,
            reason,
        };
        let cpus = nr_cpus(t::TRACE_NOW).map_err(|e| failed(e.to_string()))?;
        let values = PerCpuValues::try_from(vec![TraceEvent::arrived(0); cpus])
            .map_err(|e| failed(e.to_string()))?;
        let mut a: PerCpuArray<_, TraceEvent> = self.typed(t::TRACE_NOW)?;
        a.set(0, values, 0).map_err(map_err(t::TRACE_NOW))
    }

    /// Switches an aya-log record per verdict (no reload; off after a load).
    pub fn set_debug(&mut self, on: bool) -> Result<(), DataPathError> {
        self.set_watch_bit(t::WATCH_DEBUG, on)
    }

    /// Whether verdicts are logged.
    pub fn debug(&self) -> Result<bool, DataPathError> {
        Ok(self.watch_bits()? & t::WATCH_DEBUG != 0)
    }

    /// Switches a trace event per verdict (no reload; off after a load).
    pub fn set_tracing(&mut self, on: bool) -> Result<(), DataPathError> {
        self.set_watch_bit(t::WATCH_TRACE, on)
    }

    /// Whether trace events are sent.
    pub fn tracing(&self) -> Result<bool, DataPathError> {
        Ok(self.watch_bits()? & t::WATCH_TRACE != 0)
    }

    /// The verdict logger: forwards the data path's aya-log records to this process's `log`
    /// logger (target `xdplb::datapath`). Once per load: the ring moves into it.
    pub fn take_logger(&mut self) -> Result<EbpfLogger<&'static dyn log::Log>, DataPathError> {
        EbpfLogger::init(&mut self.ebpf).map_err(|e| DataPathError::Map {
            map: "AYA_LOGS",
            reason: e.to_string(),
        })
    }

    /// The ring of trace events (`TraceEvent`). Once per load: the ring moves to the caller.
    pub fn take_trace_ring(&mut self) -> Result<RingBuf<MapData>, DataPathError> {
        let map = self
            .ebpf
            .take_map(t::TRACE_RING)
            .ok_or(DataPathError::Map {
                map: t::TRACE_RING,
                reason: "not in the object (or already taken)".into(),
            })?;
        RingBuf::try_from(map).map_err(map_err(t::TRACE_RING))
    }

    /// Trace events dropped since the load (over the per-CPU budget, or the ring was full),
    /// summed over the CPUs.
    pub fn trace_dropped(&self) -> Result<u64, DataPathError> {
        let a: PerCpuArray<_, TraceBudget> = self.typed_ref(t::TRACE_BUDGET)?;
        let v = a.get(&0, 0).map_err(map_err(t::TRACE_BUDGET))?;
        Ok(v.iter().map(|b| b.dropped).sum())
    }

    /// Reads and clears `CONFIG_DEBUG`, which switched logging before the switch word did:
    /// pins of an earlier daemon may still hold it set.
    pub fn take_legacy_debug(&mut self) -> Result<bool, DataPathError> {
        let mut a: Array<_, u32> = self.typed(m::CONFIG)?;
        let on = a.get(&m::CONFIG_DEBUG, 0).map_err(map_err(m::CONFIG))? != 0;
        if on {
            a.set(m::CONFIG_DEBUG, 0, 0).map_err(map_err(m::CONFIG))?;
        }
        Ok(on)
    }
}

/// Loads `xdplb_watch` and puts it in slot 0 of `WATCH_JUMP`, where the balancer's programs
/// tail-call it while anything watches. Not pinned: each load fills its own.
pub(super) fn fill_jump_table(ebpf: &mut aya::Ebpf) -> Result<(), DataPathError> {
    put_in_jump_table(ebpf, t::WATCH_JUMP, 0, t::PROG_WATCH)
}
