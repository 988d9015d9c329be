//! Test support for xdplb: a packet builder for fixtures, network namespaces, real servers and
//! clients, and the L2 topology. The tests themselves are in `tests/tests/`; they need root.
pub mod bgp;
pub mod capture;
pub mod daemon;
pub mod exposition;
pub mod fib;
pub mod generator;
pub mod l2env;
pub mod l3env;
pub mod l3held;
pub mod live;
pub mod netns;
pub mod oracle;
pub mod packet;
pub mod peers;
pub mod pmtu;
pub mod prometheus;
pub mod reference;
pub mod tools;
pub mod topology;
pub mod trace;
pub mod xdp;
