//! Test-only failure injection for the mirror's map writes. Compiled in, inert unless the
//! daemon starts with `XDPLB_TEST_FAULTS=FILE`: before each write it looks for FILE, and a
//! plan found there (the file is then removed) replaces the current one:
//!
//! * `fail AFTER COUNT`: AFTER writes succeed, the next COUNT fail (a failed write changes
//!   nothing), then writes succeed again;
//! * `panic AFTER`: AFTER writes succeed, the next one panics (a bug mid-sync);
//! * `off`: no more faults.
//!
//! Tests use it to fail a sync half-way, which no real map does on demand.

use std::path::PathBuf;

/// The environment variable naming the plan file.
pub const ENV: &str = "XDPLB_TEST_FAULTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Off,
    Fail { after: u64, count: u64 },
    Panic { after: u64 },
}

/// The injector a `DataPath` consults before each map write.
#[derive(Debug)]
pub struct Faults {
    file: Option<PathBuf>,
    plan: Plan,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            file: None,
            plan: Plan::Off,
        }
    }
}

impl Faults {
    /// Reads plans from `file` from now on.
    pub fn enable(file: PathBuf) -> Faults {
        Faults {
            file: Some(file),
            plan: Plan::Off,
        }
    }

    /// Called before one write to `map`: an error fails it.
    pub fn before_write(&mut self, map: &str) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if let Ok(text) = std::fs::read_to_string(file) {
            let _ = std::fs::remove_file(file); // read once; a missing file is no plan
            match parse(&text) {
                Ok(plan) => self.plan = plan,
                Err(e) => log::error!("{ENV} file {}: {e}", file.display()),
            }
        }
        match &mut self.plan {
            Plan::Off => Ok(()),
            Plan::Fail { after, .. } | Plan::Panic { after } if *after > 0 => {
                *after -= 1;
                Ok(())
            }
            Plan::Fail { count, .. } => {
                *count -= 1;
                if *count == 0 {
                    self.plan = Plan::Off;
                }
                Err(format!("injected test failure ({ENV}) writing {map}"))
            }
            Plan::Panic { .. } => {
                self.plan = Plan::Off;
                panic!("injected test panic ({ENV}) writing {map}");
            }
        }
    }
}

fn parse(text: &str) -> Result<Plan, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let num = |w: &str| {
        w.parse::<u64>()
            .map_err(|_| format!("{w:?} is not a number"))
    };
    match words.as_slice() {
        ["off"] => Ok(Plan::Off),
        ["fail", after, count] => match num(count)? {
            0 => Ok(Plan::Off),
            count => Ok(Plan::Fail {
                after: num(after)?,
                count,
            }),
        },
        ["panic", after] => Ok(Plan::Panic { after: num(after)? }),
        _ => Err(format!(
            "{text:?} is not a plan (`fail AFTER COUNT`, `panic AFTER` or `off`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_fails_the_writes_it_names_then_stops() {
        let file = std::env::temp_dir().join(format!("xdplb-faults-{}", std::process::id()));
        let mut f = Faults::enable(file.clone());
        assert!(f.before_write("m").is_ok(), "no file, no fault");
        std::fs::write(&file, "fail 1 2\n").unwrap();
        let results: Vec<bool> = (0..5).map(|_| f.before_write("m").is_ok()).collect();
        assert_eq!(results, [true, false, false, true, true]);
        assert!(!file.exists(), "the plan file is consumed");
        std::fs::write(&file, "fail 0 1000").unwrap();
        assert!(f.before_write("m").is_err());
        std::fs::write(&file, "off").unwrap();
        assert!(f.before_write("m").is_ok());
        assert!(Faults::default().before_write("m").is_ok(), "inert");
        assert!(parse("fail x 1").is_err() && parse("crash").is_err());
    }
}
