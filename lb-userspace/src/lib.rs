//! xdplb control plane.
pub mod maglev;
