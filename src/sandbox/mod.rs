//! A local stand-in for the BI import and export APIs (`keygate sandbox`).
