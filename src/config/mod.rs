//! Configuration: raw file formats → validated program specs.
//!
//! Nothing outside this module sees a raw file: the rest of provisr works on [`ProgramSpec`].

pub mod duration;
pub mod spec;

pub use duration::Dur;
pub use spec::*;
