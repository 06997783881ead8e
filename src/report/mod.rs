//! What the harness reports: KTAP ([`ktap`]) on stdout.

pub mod ktap;
