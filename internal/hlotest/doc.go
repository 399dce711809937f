// Package hlotest writes the StableHLO of a gomlx graph for the xla backend without a PJRT
// plugin, so tests can check a per-chip SPMD program (its collectives, its parameters)
// on machines with no accelerator.
//
// gomlx's xla backend writes StableHLO in pure Go (go-xla's stablehlo builder) and needs
// the plugin only to compile it. Its Backend type keeps the plugin, client and device count
// in unexported fields, so PluginlessXLA builds a Backend value whose plugin and client are
// empty placeholders (set through reflect+unsafe; gomlx v0.26.0 / go-xla v0.1.4 field
// names); Program lets Graph.Compile write the program (its last step, handing it to PJRT,
// fails on the empty client and is recovered) and reads it back from the builder. If those
// internals change the tests skip, saying so.
package hlotest
