//! `rk agent`: the kubelet and proxy of a node. Not built yet; `rk server` runs the
//! control plane only until it is.

pub mod simulate;
