// Package reference is a plain float64 Gemma 3 forward pass written straight from the math
// (docs/gemma3.md) with no paging, batching or graph. Tests use it as an independent check of
// the model graph on shapes the Hugging Face fixtures do not cover. It is slow; never serve with it.
package reference
