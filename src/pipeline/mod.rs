//! The paper's experiment as cached stages, and its report.

pub mod analyses;
