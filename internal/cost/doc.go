// Package cost turns a benchmark result into money: dollars per million output tokens and
// per million total (input + output) tokens at a given hourly price, and the monthly cost
// of serving a given load with enough replicas, for one price or for the catalogue of the
// migration report (H100 a3-highgpu-1g, TPU v5e-4 and v5e-8, on-demand and Spot).
//
// The throughput a result reports is taken as what one replica sustains at the price: run
// the benchmark at the load and latency targets you mean to serve (request rate or
// concurrency), not at a rate the SLOs would not allow. Prices are list prices that change;
// the catalogue's figures are the migration report's and are meant to be overridden.
//
// Errors: every function returns an error wrapping ErrInput, naming the field, for a
// non-positive price, throughput or hours, or an unknown catalogue key.
//
// Concurrency: the package has no mutable state; everything may be called concurrently.
package cost
