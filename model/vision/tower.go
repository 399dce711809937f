package vision

import (
	"fmt"
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// WeightSpec is one tensor of the tower or projector: its Hugging Face name (without the
// checkpoint's layout prefix, see LoadWeights) and shape.
type WeightSpec struct {
	Name  string
	Shape []int
}

// Per-layer tensors, in the order Encode consumes them.
const (
	wLN1W = iota
	wLN1B
	wQW
	wQB
	wKW
	wKB
	wVW
	wVB
	wOW
	wOB
	wLN2W
	wLN2B
	wFC1W
	wFC1B
	wFC2W
	wFC2B
	numLayerWeights
)

var layerWeightNames = [numLayerWeights]string{
	"layer_norm1.weight", "layer_norm1.bias",
	"self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
	"self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
	"layer_norm2.weight", "layer_norm2.bias",
	"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
}

// Indices of the non-layer tensors in WeightSpecs order.
const (
	wPatchW = 0
	wPatchB = 1
	wPosEmb = 2
	// numHeadWeights precede the layers; the post-layernorm (2) and projector (2) follow them.
	numHeadWeights = 3
	numTailWeights = 4
)

// Name prefixes of the tower and projector in a Gemma3ForConditionalGeneration checkpoint.
const (
	TowerPrefix     = "vision_tower.vision_model."
	ProjectorPrefix = "multi_modal_projector."
)

// WeightSpecs lists the tensors Encode takes, in order:
//
//	0 vision_tower.vision_model.embeddings.patch_embedding.weight  [D, 3, P, P]
//	1 vision_tower.vision_model.embeddings.patch_embedding.bias    [D]
//	2 vision_tower.vision_model.embeddings.position_embedding.weight [N, D]
//	3+16·l … the 16 tensors of encoder layer l (layerWeightNames order: layer_norm1 w/b,
//	  q/k/v/out_proj weight/bias, layer_norm2 w/b, mlp.fc1 w/b, mlp.fc2 w/b)
//	then vision_tower.vision_model.post_layernorm.weight, .bias [D],
//	multi_modal_projector.mm_soft_emb_norm.weight [D],
//	multi_modal_projector.mm_input_projection_weight [D, text hidden].
//
// Linear weights are PyTorch's [out, in].
func WeightSpecs(c *Config) []WeightSpec {
	d, i, p, n := c.HiddenSize, c.IntermediateSize, c.PatchSize, c.NumPatches()
	specs := []WeightSpec{
		{TowerPrefix + "embeddings.patch_embedding.weight", []int{d, c.NumChannels, p, p}},
		{TowerPrefix + "embeddings.patch_embedding.bias", []int{d}},
		{TowerPrefix + "embeddings.position_embedding.weight", []int{n, d}},
	}
	for l := 0; l < c.NumHiddenLayers; l++ {
		shapes := [numLayerWeights][]int{
			{d}, {d}, {d, d}, {d}, {d, d}, {d}, {d, d}, {d}, {d, d}, {d}, {d}, {d}, {i, d}, {i}, {d, i}, {d},
		}
		for k := 0; k < numLayerWeights; k++ {
			specs = append(specs, WeightSpec{fmt.Sprintf("%sencoder.layers.%d.%s", TowerPrefix, l, layerWeightNames[k]), shapes[k]})
		}
	}
	return append(specs,
		WeightSpec{TowerPrefix + "post_layernorm.weight", []int{d}},
		WeightSpec{TowerPrefix + "post_layernorm.bias", []int{d}},
		WeightSpec{ProjectorPrefix + "mm_soft_emb_norm.weight", []int{d}},
		WeightSpec{ProjectorPrefix + "mm_input_projection_weight", []int{d, c.TextHiddenSize}},
	)
}

// encodeOptions are deliberate deviations for ablation tests.
type encodeOptions struct {
	causal bool // causal attention among patches (SigLIP's is bidirectional)
}

// Encode builds the SigLIP vision tower and the Gemma 3 multimodal projector:
// pixels [numImages, 3, S, S] (normalised; float32 or the compute dtype, converted as HF
// does with pixel_values.to(patch_embedding.weight.dtype)) → image features
// [numImages, mm_tokens_per_image, text hidden] in the compute dtype. weights are nodes
// in WeightSpecs order, in the compute dtype. Images are independent (attention never
// crosses images), so padding a batch with zero images does not change the real ones.
//
// It mirrors transformers' SiglipVisionTransformer (embeddings → encoder → post_layernorm,
// no head) and Gemma3MultiModalProjector; like PyTorch on bf16 inputs, norms and softmax are
// computed in float32 and cast back.
func Encode(cfg *Config, weights []*Node, pixels *Node) *Node {
	return encode(cfg, weights, pixels, encodeOptions{})
}

func encode(cfg *Config, weights []*Node, pixels *Node, opt encodeOptions) *Node {
	if want := len(WeightSpecs(cfg)); len(weights) != want {
		panic(fmt.Sprintf("vision.Encode: %d weight nodes, the config needs %d", len(weights), want))
	}
	dims := pixels.Shape().Dimensions
	if len(dims) != 4 || dims[1] != cfg.NumChannels || dims[2] != cfg.ImageSize || dims[3] != cfg.ImageSize {
		panic(fmt.Sprintf("vision.Encode: pixels shaped %v, want [numImages, %d, %d, %d]", dims, cfg.NumChannels, cfg.ImageSize, cfg.ImageSize))
	}
	g := pixels.Graph()
	dtype := weights[0].DType()
	B := dims[0]
	D, P, G := cfg.HiddenSize, cfg.PatchSize, cfg.PatchesPerSide()
	N := G * G
	NH, HD := cfg.NumAttentionHeads, cfg.HeadDim()
	eps := cfg.LayerNormEps
	pixels = ConvertDType(pixels, dtype)

	// Patch embedding: the stride-P P×P convolution as a matmul over flattened patches.
	// [B, C, G, P, G, P] → [B, G(row), G(col), C, P, P] → [B, N, C·P·P]; patch n = row·G + col,
	// as conv(...).flatten(2).transpose(1, 2) orders them.
	x := Reshape(pixels, B, cfg.NumChannels, G, P, G, P)
	x = TransposeAllDims(x, 0, 2, 4, 1, 3, 5)
	x = Reshape(x, B, N, cfg.NumChannels*P*P)
	wPatch := Reshape(weights[wPatchW], D, cfg.NumChannels*P*P)
	x = addBias(linear(x, wPatch), weights[wPatchB])
	x = Add(x, InsertAxes(weights[wPosEmb], 0)) // [B, N, D]

	var mask *Node
	if opt.causal {
		q := Iota(g, shapes.Make(dtypes.Int32, N, N), 0)
		k := Iota(g, shapes.Make(dtypes.Int32, N, N), 1)
		mask = GreaterOrEqual(q, k)
	}
	scale := 1 / math.Sqrt(float64(HD))
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		w := weights[numHeadWeights+l*numLayerWeights : numHeadWeights+(l+1)*numLayerWeights]
		residual := x
		h := layerNorm(x, w[wLN1W], w[wLN1B], eps)
		q := Reshape(addBias(linear(h, w[wQW]), w[wQB]), B, N, NH, HD)
		k := Reshape(addBias(linear(h, w[wKW]), w[wKB]), B, N, NH, HD)
		v := Reshape(addBias(linear(h, w[wVW]), w[wVB]), B, N, NH, HD)
		scores := MulScalar(Einsum("bqhd,bkhd->bhqk", q, k), scale) // [B, NH, N, N]
		scores = ConvertDType(scores, dtypes.Float32)
		if mask != nil {
			scores = Where(BroadcastToDims(leading(mask, 4), B, NH, N, N), scores, Scalar(g, dtypes.Float32, -1e30))
		}
		probs := ConvertDType(Softmax(scores, -1), dtype)
		attn := Einsum("bhqk,bkhd->bqhd", probs, v) // [B, N, NH, HD]
		attn = addBias(linear(Reshape(attn, B, N, D), w[wOW]), w[wOB])
		x = Add(residual, attn)

		residual = x
		h = layerNorm(x, w[wLN2W], w[wLN2B], eps)
		h = addBias(linear(h, w[wFC1W]), w[wFC1B])
		h = geluTanh(h)
		h = addBias(linear(h, w[wFC2W]), w[wFC2B])
		x = Add(residual, h)
	}
	tail := weights[numHeadWeights+cfg.NumHiddenLayers*numLayerWeights:]
	x = layerNorm(x, tail[0], tail[1], eps) // last_hidden_state [B, N, D]

	// Projector: the [G, G] patch grid average-pooled by K×K windows (stride K) to [T, T];
	// pooled token = tr·T + tc, as avg_pool → flatten(2) → transpose(1, 2) orders them.
	T, K := cfg.TokensPerSide(), cfg.PoolKernel()
	pooled := Reshape(ConvertDType(x, dtypes.Float32), B, T, K, T, K, D)
	pooled = ConvertDType(ReduceMean(pooled, 2, 4), dtype) // [B, T, T, D]
	pooled = Reshape(pooled, B, T*T, D)
	normed := rmsNorm(pooled, tail[2], eps)
	// mm_input_projection_weight is [D, textHidden]: normed · W (no transpose).
	return DotGeneral(normed, []int{2}, nil, tail[3], []int{0}, nil) // [B, T², textHidden]
}

// addBias adds a [D] bias (or scale) to x [..., D].
func addBias(x, b *Node) *Node { return Add(x, leading(b, x.Rank())) }

// leading gives v leading unit axes up to rank.
func leading(v *Node, rank int) *Node {
	for v.Rank() < rank {
		v = InsertAxes(v, 0)
	}
	return v
}

// linear is x·wᵀ for a PyTorch [out, in] weight.
func linear(x, w *Node) *Node {
	return DotGeneral(x, []int{x.Rank() - 1}, nil, w, []int{1}, nil)
}

// layerNorm is torch.nn.LayerNorm over the last axis, computed in float32.
func layerNorm(x, w, b *Node, eps float64) *Node {
	dtype := x.DType()
	xf := ConvertDType(x, dtypes.Float32)
	mean := ReduceAndKeep(xf, ReduceMean, -1)
	xc := Sub(xf, mean)
	variance := ReduceAndKeep(Mul(xc, xc), ReduceMean, -1)
	y := Mul(xc, Rsqrt(AddScalar(variance, eps)))
	y = Add(Mul(y, leading(ConvertDType(w, dtypes.Float32), y.Rank())), leading(ConvertDType(b, dtypes.Float32), y.Rank()))
	return ConvertDType(y, dtype)
}

// rmsNorm is Gemma3RMSNorm: float32 x·rsqrt(mean(x²)+eps)·(1+w), cast back.
func rmsNorm(x, w *Node, eps float64) *Node {
	dtype := x.DType()
	xf := ConvertDType(x, dtypes.Float32)
	variance := ReduceAndKeep(Mul(xf, xf), ReduceMean, -1)
	y := Mul(xf, Rsqrt(AddScalar(variance, eps)))
	y = Mul(y, leading(OnePlus(ConvertDType(w, dtypes.Float32)), y.Rank()))
	return ConvertDType(y, dtype)
}

// geluTanh is gelu_pytorch_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), computed in
// float32 and rounded once, as PyTorch's kernel does for bf16 inputs.
func geluTanh(x *Node) *Node {
	dtype := x.DType()
	x = ConvertDType(x, dtypes.Float32)
	inner := MulScalar(Add(x, MulScalar(Mul(Mul(x, x), x), 0.044715)), math.Sqrt(2/math.Pi))
	return ConvertDType(Mul(MulScalar(x, 0.5), OnePlus(Tanh(inner))), dtype)
}
