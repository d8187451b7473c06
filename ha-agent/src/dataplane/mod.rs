//! The data plane loader: the only module that knows map names and layouts.
