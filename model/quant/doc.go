// Package quant owns the formats and the recipe of tpuserve's quantized weights, as plain Go
// with no graph or device code:
//
//   - Mode: how a decoder Linear runs (none; int8 or FP8 e4m3 weights, per output channel,
//     symmetric; with dynamic per-token activation quantization, W8A8 / FP8-dynamic, or
//     weight-only). ParseMode reads the --quantization flag.
//   - Scheme: a Mode plus which Linears it covers (compressed-tensors targets and ignore) and
//     whether the checkpoint stores them already quantized. ParseConfig reads a hub
//     config.json's quantization_config (quant_method "compressed-tensors", formats
//     "int-quantized" and "float-quantized"); everything else is refused with an error that
//     names the field. Scheme.ConfigJSON writes one back.
//   - The recipe (QuantizeInt8, QuantizeFP8): scale = bf16(max|w| / 127) per output row
//     (FP8: / 448); values = clamp(round_half_even(w / scale), -128, 127) (FP8: w / scale
//     rounded to e4m3, nearest even), the division by the bf16-rounded scale in float32 —
//     the recipe that reproduces the compressed-tensors fixtures bit for bit.
//   - The FP8 e4m3 ("e4m3fn": no infinities, 0x7f/0xff NaN, max 448) codec: E4M3Bits,
//     E4M3Value.
//
// The model package maps these onto tensors and the graph (model/quant*.go); the design and
// the backends' support are in docs/quantization.md.
//
// Errors: ErrUnsupported (a valid configuration this server does not run: other methods,
// group/block strategies, static or asymmetric activations, packed int4, …) and ErrInvalid
// (a malformed configuration or flag). Both name the field; callers wrap them into their own
// sentinels (model.ErrConfig).
//
// Concurrency: everything here is a pure function of its arguments or an immutable value;
// safe for concurrent use.
package quant
