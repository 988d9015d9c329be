//! The names user space uses (`lb_common::maps`) against the built objects' own: every map and
//! program of the load balancer's object (lb-ebpf) and of the tools object (lb-ebpf-tools) has
//! its name there, and every name there has its map or program in its object. Also: the
//! tools stay out of the load balancer's object. No root needed.

use std::collections::BTreeSet;

use lb_common::maps as m;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// An object's maps (symbols in aya's `maps` section), programs (global functions in a
/// program section: `xdp`) and load-time globals (symbols in `.rodata`).
struct Names {
    maps: BTreeSet<String>,
    programs: BTreeSet<String>,
    globals: BTreeSet<String>,
}

fn names(object: &[u8]) -> Names {
    assert!(
        !object.is_empty(),
        "the object was not built (AYA_BUILD_SKIP=1?)"
    );
    let file = object::File::parse(object).expect("an ELF object");
    let mut n = Names {
        maps: BTreeSet::new(),
        programs: BTreeSet::new(),
        globals: BTreeSet::new(),
    };
    for sym in file.symbols() {
        let (Some(index), Ok(name)) = (sym.section_index(), sym.name()) else {
            continue;
        };
        let section = file.section_by_index(index).expect("the symbol's section");
        let set = match section.name().expect("a section name") {
            "maps" => &mut n.maps,
            s if s.starts_with("xdp") && sym.kind() == SymbolKind::Text && sym.is_global() => {
                &mut n.programs
            }
            ".rodata" if sym.is_global() => &mut n.globals,
            _ => continue,
        };
        set.insert(name.to_string());
    }
    n
}

/// `found` and `named` hold the same names; else a sentence saying which differ and where.
fn same(what: &str, found: &BTreeSet<String>, named: &[&str]) {
    let named: BTreeSet<String> = named.iter().map(|s| s.to_string()).collect();
    let unnamed: Vec<_> = found.difference(&named).collect();
    let missing: Vec<_> = named.difference(found).collect();
    assert!(
        unnamed.is_empty() && missing.is_empty(),
        "{what}: in the object but not named in lb_common::maps: {unnamed:?}; named there but \
         not in the object: {missing:?}"
    );
}

/// `object`'s maps and programs are exactly `maps` and `programs`; its names, for more checks.
fn check(what: &str, object: &[u8], maps: &[&str], programs: &[&str]) -> Names {
    let n = names(object);
    same(&format!("{what} maps (map_names!)"), &n.maps, maps);
    same(&format!("{what} programs"), &n.programs, programs);
    n
}

#[test]
fn load_balancer_object_matches_its_names() {
    let lb = lb_userspace::datapath::OBJECT;
    let n = check("load balancer", lb, m::LB_MAPS, m::LB_PROGRAMS);
    assert!(
        n.globals.contains(m::GLOBAL_RING_SIZE),
        "the global {} the loader sets is not in the object: {:?}",
        m::GLOBAL_RING_SIZE,
        n.globals
    );
}

#[test]
fn tools_object_matches_its_names() {
    check(
        "tools",
        lb_tests::tools::OBJECT,
        m::TOOL_MAPS,
        m::TOOL_PROGRAMS,
    );
}

/// No name serves two maps (the pin directory and aya's lookups go by name).
#[test]
fn every_map_name_is_used_once() {
    let all: BTreeSet<_> = m::LB_MAPS.iter().chain(m::TOOL_MAPS).collect();
    assert_eq!(
        all.len(),
        m::LB_MAPS.len() + m::TOOL_MAPS.len(),
        "a name used twice"
    );
}
