//! Address stores (placeholder: being written).
