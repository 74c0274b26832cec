//! Genesis Mesh sidecar: the data plane (see issue "The sidecar data plane"). Not built yet.
#![forbid(unsafe_code)]
