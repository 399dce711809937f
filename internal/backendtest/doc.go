// Package backendtest gives tests the compute backend named by TPUSERVE_BACKEND (default:
// the pure-Go backend), so every model and engine test also runs on a PJRT plugin, e.g.
// TPUSERVE_BACKEND=xla:cpu, by setting one variable.
package backendtest
