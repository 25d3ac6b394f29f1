//! The resource model shared by the API server and its clients inside rk: the registry
//! of served kinds, `metav1.Status` errors, selectors, patches, tables and defaults.

pub mod cel;
pub mod crd;
pub mod defaults;
pub mod events;
pub mod limitrange;
pub mod managed;
pub mod meta;
pub mod patch;
pub mod podsecurity;
pub mod protobuf;
pub mod quota;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod sparse;
pub mod status;
pub mod table;
pub mod validation;
pub mod vap;
