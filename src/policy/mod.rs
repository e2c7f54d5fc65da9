//! May they call this? Pure functions: path normalisation, the first-match
//! route table, and scope and plan checks.

pub mod path;
