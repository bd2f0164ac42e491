//! The figures, one module each: how each is measured against its baseline, what it keeps, and
//! its rows of the table. Which daemon each runs against is `phases.rs`.

pub mod api;
pub mod fleet;
pub mod idle;
pub mod logs;
pub mod reconcile;
pub mod restart;
pub mod rss;
pub mod saved;
pub mod spawn;
pub mod stop;

use crate::table::Row;

/// Everything measured; rows are built from it at the end.
#[derive(Default)]
pub struct Results {
    pub spawn: spawn::Spawn,
    pub stop: Option<stop::Stop>,
    pub restart: Option<restart::Restart>,
    pub idle: Option<idle::Idle>,
    pub logs: Option<logs::Logs>,
    pub reconcile: reconcile::Reconcile,
    pub api: Option<api::Api>,
    pub rss: rss::Rss,
    pub saved: Option<saved::Saved>,
    pub fleet: Option<fleet::Fleet>,
    /// Findings printed below the table.
    pub notes: Vec<String>,
}

impl Results {
    pub fn note(&mut self, s: String) {
        eprintln!("  {s}");
        self.notes.push(s);
    }

    /// The table, in the order of `--only`'s figures.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        self.spawn.rows(&mut rows);
        if let Some(s) = &self.stop {
            s.rows(&mut rows);
        }
        if let Some(r) = &self.restart {
            r.rows(&mut rows);
        }
        if let Some(i) = &self.idle {
            i.rows(&mut rows);
        }
        if let Some(l) = &self.logs {
            l.rows(&mut rows);
        }
        self.reconcile.rows(&mut rows);
        if let Some(a) = &self.api {
            a.rows(&mut rows);
        }
        self.rss.rows(&mut rows);
        if let Some(s) = &self.saved {
            s.rows(&mut rows);
        }
        if let Some(f) = &self.fleet {
            f.rows(&mut rows);
        }
        rows
    }
}
