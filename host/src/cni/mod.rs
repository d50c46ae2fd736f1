//! The CNI protocol layer (placeholder: being written).
