//! Exists so the agent can name this crate as a build-dependency: cargo then
//! rebuilds the agent (and re-runs aya-build) when the kernel side changes.
#![no_std]
