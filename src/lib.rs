//! rk: a lightweight Kubernetes distribution in one executable.
#![forbid(unsafe_code)]

pub mod embedded;
