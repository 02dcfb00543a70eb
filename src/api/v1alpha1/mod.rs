//! `vigil.dev/v1alpha1`.

mod healthcheck;
mod instancestatus;

pub use healthcheck::*;
pub use instancestatus::*;
