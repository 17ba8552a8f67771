//! Benchmarks live here (criterion); see issue "Benchmarks" and BENCHMARKS.md.
