// Package vision owns Gemma 3's image input up to the image features: the image part of
// config.json and preprocessor_config.json (Config, PreprocessorConfig), preprocessing of
// encoded image bytes into pixel values exactly as Hugging Face's Gemma3ImageProcessor
// computes them after vLLM's RGB conversion (Processor), and the SigLIP vision tower with
// Gemma 3's multimodal projector as a gomlx graph (Encode) with a compiled runner for a
// closed set of batch sizes (Encoder).
//
// It does not splice features into the language model's prefill, build attention masks,
// hash prefixes or expand prompts: that is the model's (SeqChunk.Images, the image mask),
// the engine's (Request.Images, prefix keys) and the tokenizer's (ExpandImages) business.
// EncodeRows is the form the engine runs: the features as the step's image-embedding rows
// [rows, text hidden], left on the device (PrecompileRows compiles it per image bucket). What it gives them:
// Config's token ids (image_token_index, boi/eoi), mm_tokens_per_image soft tokens per image
// (Config.PlaceholderIDs, Config.ImageSpans to find and check them in a prompt: the spans
// are the bidirectional-attention groups and the order features are spliced in), features
// [numImages, mm_tokens_per_image, text hidden], and a content hash per image
// (Preprocessed.Hash) for prefix-cache keys. As in HF's Gemma3Model, the features replace
// the image tokens' embeddings after the √hidden embedding scale (they are not scaled).
//
// # Mirrors
//
//   - vLLM vllm/multimodal/image.py (convert_image_mode, rgba_to_rgb): RGBA over white, others
//     via PIL's convert("RGB"); here every image with alpha (LA, RGB+tRNS, transparent palette
//     entries too) is composited over white with PIL's integer blend (Paste.c), and CMYK uses
//     PIL's cmyk2rgb (Convert.c).
//   - transformers models/gemma3/image_processing_gemma3.py (Gemma3ImageProcessor): optional
//     pan-and-scan crops (the whole image first, then the crops, row-major), PIL BILINEAR
//     resize to size (Pillow src/libImaging/Resample.c: separable, horizontal pass first,
//     triangle filter with support scaled by the shrink factor, 22-bit fixed-point taps, each
//     pass rounded and clipped to uint8), rescale (float64 multiply, float32 result),
//     normalize ((x − mean)/std in float32), channel-first.
//   - transformers models/siglip/modeling_siglip.py (SiglipVisionEmbeddings, SiglipEncoderLayer,
//     SiglipAttention, SiglipMLP, SiglipVisionTransformer without head): stride-P patch
//     convolution (here a reshape into patches and one matmul), learned position embedding,
//     pre-norm encoder layers (LayerNorm with bias, bidirectional multi-head attention with
//     biases and head_dim^-0.5 scaling, softmax in float32, MLP with gelu_pytorch_tanh),
//     post_layernorm.
//   - transformers models/gemma3/modeling_gemma3.py (Gemma3MultiModalProjector,
//     Gemma3RMSNorm): the patch grid average-pooled with kernel = stride =
//     patches_per_side/√mm_tokens_per_image, RMSNorm with (1 + w) and vision layer_norm_eps,
//     then · mm_input_projection_weight [vision hidden, text hidden] (no transpose).
//
// Pan-and-scan crops (when preprocessor_config enables them) are images of their own, in
// Preprocessed.Images order; the prompt must carry one placeholder run per crop, as HF's
// Gemma3Processor writes it ("Here is the original image … and here are some crops …").
// Only the PIL-based Gemma3ImageProcessor is mirrored: Gemma3ImageProcessorFast resizes in
// float with torchvision and can differ by about one 8-bit level.
//
// On the tiny fixture (testdata/gemma3-tiny-vision, made by transformers 4.53.3) pixel values
// are bit-identical and f32 features agree to 2e-6. Known differences from PIL, none of which
// the fixtures exercise: JPEG chroma upsampling (Go: nearest; libjpeg: triangle, so ±few
// levels at colour edges), 16-bit grayscale (high byte here; PIL clips to 255), a first GIF
// frame smaller than the logical screen (here the uncovered area is transparent, so white;
// PIL fills it with the transparent or first palette colour).
//
// # Lifecycle
//
//	cfg, _ := vision.LoadConfig(dir)                  // vision_config, token ids, mm_tokens_per_image
//	pcfg, _ := vision.LoadPreprocessorConfig(dir)     // preprocessor_config.json
//	proc, _ := vision.NewProcessor(pcfg, vision.WithMaxPixels(n), vision.WithMaxBytes(n))
//	enc, _ := vision.LoadEncoder(backend, dir, dtypes.BFloat16) // weights on the device
//	_ = enc.Precompile(1, 2, 4)                       // at start-up: one program per bucket
//	pp, err := proc.Preprocess(imageBytes)            // per content part, on the host
//	feats, err := enc.Encode(pp.Images)               // per prefill; never compiles
//	enc.Close()
//
// To put the tower into another compiled program (e.g. the prefill step), call
// Encode(&cfg, weightNodes, pixels) inside its graph function with the weights in
// WeightSpecs order (LoadWeights returns them in that order).
//
// # Errors
//
// Preprocess returns *ImageError values that wrap ErrImage and one kind: ErrCorrupt,
// ErrUnsupportedFormat, ErrTooLarge (bytes over MaxBytes, or header dimensions over
// MaxPixels, refused before any pixel buffer is allocated), ErrEmpty; Format names the
// detected format. These are the client's fault (HTTP 400 naming the content part).
// Configuration errors wrap ErrConfig and name the field; checkpoint errors wrap
// model.ErrWeights and name the tensor and file; Encoder misuse wraps ErrInput or
// ErrNotCompiled (a batch no precompiled bucket serves: the server's fault, not the
// client's). Encode (the graph function) panics on shape mismatches while building, as
// gomlx graph code does; gomlx's Exec turns that into an error.
//
// # Concurrency
//
// Config, PreprocessorConfig and Processor are immutable: Preprocess may run on many
// goroutines at once (it is CPU work on the request's goroutine, ~60 ms for a 1280×960
// image to 896² here). An Encoder serialises Precompile and Encode with a mutex (one
// program runs on the device at a time); Compilations is safe to read at any time.
//
// # Placement under tensor parallelism
//
// The tower and projector are replicated on every chip, not Megatron-split. At Gemma 3
// 4B–27B they are SigLIP-So400m plus the projector: 420 M parameters, 0.84 GB in bf16
// (the memory plan must count it per chip, Config.WeightBytes: 5% of a v5e's 16 GB, plus
// Config.PeakActivationBytes of the largest bucket, 1.7 GB per image unfused). Splitting it would save
// 0.73 GB per chip at TP=8 but add two all-reduces per layer (54 per image, each of a
// 4096 × 1152 activation), for a model whose whole forward is ~5.5 TFLOP per image —
// tens of milliseconds on one chip. Replicated weights also allow the cheap form of
// parallelism: with a bucket that is a multiple of the mesh size, shard the pixel batch
// axis (data parallel, no collectives inside the tower) and gather the features
// (256 × text hidden per image) to replicated before they replace the image-token
// embeddings. Nothing in the graph assumes one device: Encode is plain per-image math.
package vision
