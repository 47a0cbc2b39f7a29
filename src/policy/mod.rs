//! Request matching against policies. The path is normalised once, here,
//! and the same normalised path is what the upstream receives, so the route
//! decided is the route served.

pub mod normalize;
