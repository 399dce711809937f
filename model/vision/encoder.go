package vision

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// Encoder errors.
var (
	// ErrNotCompiled: Encode needed a bucket that Precompile did not compile (serving never
	// compiles), or Precompile was never called.
	ErrNotCompiled = errors.New("vision: no precompiled bucket")
	// ErrInput: pixel values of the wrong size, or no images.
	ErrInput = errors.New("vision: invalid encoder input")
)

// MaxBuckets bounds the number of compiled programs one Encoder keeps.
const MaxBuckets = 16

// Features are image features on the host: Data is [N, Tokens, Hidden] float32 (row-major;
// bf16 results are widened exactly), image i's soft tokens at Data[i·Tokens·Hidden:].
type Features struct {
	N, Tokens, Hidden int
	Data              []float32
}

// Image returns image i's [Tokens·Hidden] slice.
func (f *Features) Image(i int) []float32 {
	n := f.Tokens * f.Hidden
	return f.Data[i*n : (i+1)*n]
}

// Tensor returns the features as a host tensor [N, Tokens, Hidden] in dtype (Float32 or
// BFloat16, rounded to nearest even), e.g. as an input of the prefill program.
func (f *Features) Tensor(dtype dtypes.DType) (*tensors.Tensor, error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: features dtype %s not supported (want float32 or bfloat16)", ErrInput, dtype)
	}
	t := tensors.FromShape(shapes.Make(dtype, f.N, f.Tokens, f.Hidden))
	err := t.MutableBytes(func(buf []byte) {
		for i, v := range f.Data {
			if dtype == dtypes.BFloat16 {
				binary.LittleEndian.PutUint16(buf[2*i:], bf16Bits(v))
			} else {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
			}
		}
	})
	if err != nil {
		t.FinalizeAll()
		return nil, fmt.Errorf("vision: features tensor: %w", err)
	}
	return t, nil
}

// Encoder runs the vision tower and projector on a backend's device 0 for a closed set of
// batch sizes ("buckets"), each compiled once by Precompile.
type Encoder struct {
	cfg     Config
	dtype   dtypes.DType
	backend backends.Backend
	weights *Weights

	exec         *graph.Exec
	compilations atomic.Int64

	mu      sync.Mutex // serialises Precompile and Encode
	buckets []int      // sorted, compiled

	// The step-input form (EncodeRows): features as rows [rows, text hidden] left on the
	// device, one program per bucket; by rows.
	rowsExec    map[int]*graph.Exec
	rowsBuckets map[int][]int
}

// LoadEncoder reads config.json and the checkpoint in dir and puts the tower's weights on
// backend in dtype (Float32 or BFloat16). Nothing is compiled until Precompile.
func LoadEncoder(backend backends.Backend, dir string, dtype dtypes.DType) (*Encoder, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	start := time.Now()
	w, err := LoadWeights(ck, &cfg, dtype)
	if err != nil {
		return nil, err
	}
	e, err := NewEncoder(backend, cfg, w)
	if err != nil {
		w.Finalize()
		return nil, err
	}
	slog.Info("vision tower loaded", "dir", dir, "dtype", dtype, "params", cfg.NumParams(),
		"bytes", w.Bytes(), "elapsed", time.Since(start).Round(time.Millisecond))
	return e, nil
}

// NewEncoder moves w to backend's device (freeing the host copies) and builds the program.
func NewEncoder(backend backends.Backend, cfg Config, w *Weights) (*Encoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	specs := WeightSpecs(&cfg)
	if len(w.Tensors) != len(specs) {
		return nil, fmt.Errorf("%w: %d weight tensors, the config needs %d", model.ErrWeights, len(w.Tensors), len(specs))
	}
	dtype := w.Tensors[0].DType()
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
	}
	for i, t := range w.Tensors {
		if !slices.Equal(t.Shape().Dimensions, specs[i].Shape) || t.DType() != dtype {
			return nil, fmt.Errorf("%w: tensor %s is %s, want %v of %s", model.ErrWeights, specs[i].Name, t.Shape(), specs[i].Shape, dtype)
		}
		if err := t.MaterializeOnDevice(backend, false, 0); err != nil {
			return nil, fmt.Errorf("%w: moving %s to the device: %w", model.ErrWeights, specs[i].Name, err)
		}
		t.FinalizeLocal()
	}
	e := &Encoder{cfg: cfg, dtype: dtype, backend: backend, weights: w}
	numW := len(specs)
	exec, err := graph.NewExec(backend, func(in []*graph.Node) []*graph.Node {
		// Called once per compiled program: this is the compile counter.
		e.compilations.Add(1)
		return []*graph.Node{Encode(&e.cfg, in[:numW], in[numW])}
	})
	if err != nil {
		return nil, fmt.Errorf("vision: building the encoder program: %w", err)
	}
	e.exec = exec.WithName("gemma3_vision").SetMaxCache(MaxBuckets)
	return e, nil
}

// Config returns the tower's configuration.
func (e *Encoder) Config() Config { return e.cfg }

// DType is the compute dtype.
func (e *Encoder) DType() dtypes.DType { return e.dtype }

// Compilations counts the programs compiled so far (one per bucket; it must not grow while
// serving).
func (e *Encoder) Compilations() int64 { return e.compilations.Load() }

// Buckets lists the precompiled batch sizes, ascending.
func (e *Encoder) Buckets() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.buckets)
}

// Precompile compiles the program for each batch size (number of images) in buckets.
// Compiled buckets are kept; compiling one twice is a no-op.
func (e *Encoder) Precompile(buckets ...int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exec == nil {
		return fmt.Errorf("%w: the encoder is closed", ErrInput)
	}
	for _, b := range buckets {
		if b <= 0 {
			return fmt.Errorf("%w: bucket size %d must be positive", ErrInput, b)
		}
		if slices.Contains(e.buckets, b) {
			continue
		}
		if len(e.buckets) >= MaxBuckets {
			return fmt.Errorf("%w: at most %d buckets", ErrInput, MaxBuckets)
		}
		start := time.Now()
		pixels := tensors.FromShape(shapes.Make(e.dtype, b, e.cfg.NumChannels, e.cfg.ImageSize, e.cfg.ImageSize))
		err := e.exec.PreCompile(e.args(pixels)...)
		pixels.FinalizeAll()
		if err != nil {
			return fmt.Errorf("vision: compiling the encoder for %d images: %w", b, err)
		}
		e.buckets = append(e.buckets, b)
		slices.Sort(e.buckets)
		slog.Info("vision encoder compiled", "images", b, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func (e *Encoder) args(pixels *tensors.Tensor) []any {
	args := make([]any, 0, len(e.weights.Tensors)+1)
	for _, t := range e.weights.Tensors {
		args = append(args, t)
	}
	return append(args, pixels)
}

// Encode runs the tower on images (each [3, S, S] float32, as Preprocessed.Images holds
// them) and returns their features in order. A batch is run in the smallest precompiled
// bucket that holds it (padded with zero images), or in chunks of the largest bucket; it
// never compiles: with no bucket compiled it returns ErrNotCompiled.
func (e *Encoder) Encode(images [][]float32) (*Features, error) {
	if len(images) == 0 {
		return nil, fmt.Errorf("%w: no images", ErrInput)
	}
	S, C := e.cfg.ImageSize, e.cfg.NumChannels
	per := C * S * S
	for i, img := range images {
		if len(img) != per {
			return nil, fmt.Errorf("%w: image %d has %d pixel values, want %d ([%d, %d, %d])", ErrInput, i, len(img), per, C, S, S)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exec == nil {
		return nil, fmt.Errorf("%w: the encoder is closed", ErrInput)
	}
	if len(e.buckets) == 0 {
		return nil, fmt.Errorf("%w: call Precompile first", ErrNotCompiled)
	}
	T, H := e.cfg.MMTokensPerImage, e.cfg.TextHiddenSize
	out := &Features{N: len(images), Tokens: T, Hidden: H, Data: make([]float32, len(images)*T*H)}
	for done := 0; done < len(images); {
		rest := len(images) - done
		b := e.buckets[len(e.buckets)-1]
		for _, c := range e.buckets {
			if c >= rest {
				b = c
				break
			}
		}
		n := min(b, rest)
		if err := e.run(images[done:done+n], b, out.Data[done*T*H:(done+n)*T*H]); err != nil {
			return nil, err
		}
		done += n
	}
	return out, nil
}

// run encodes len(images) ≤ bucket images in the bucket's program into dst.
func (e *Encoder) run(images [][]float32, bucket int, dst []float32) error {
	pixels, err := e.pixelTensor(images, bucket)
	if err != nil {
		return err
	}
	defer pixels.FinalizeAll()
	before := e.compilations.Load()
	outs, err := e.exec.Exec(e.args(pixels)...)
	if err != nil {
		return fmt.Errorf("vision: running the encoder for %d images (bucket %d): %w", len(images), bucket, err)
	}
	if e.compilations.Load() != before {
		slog.Warn("vision encoder compiled while serving", "bucket", bucket)
	}
	res := outs[0]
	defer res.FinalizeAll()
	n := len(dst)
	var copyErr error
	if err := res.ConstBytes(func(buf []byte) {
		switch e.dtype {
		case dtypes.BFloat16:
			if len(buf) < 2*n {
				copyErr = fmt.Errorf("vision: encoder output has %d bytes, want at least %d", len(buf), 2*n)
				return
			}
			for j := range dst {
				dst[j] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(buf[2*j:])) << 16)
			}
		default:
			if len(buf) < 4*n {
				copyErr = fmt.Errorf("vision: encoder output has %d bytes, want at least %d", len(buf), 4*n)
				return
			}
			for j := range dst {
				dst[j] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*j:]))
			}
		}
	}); err != nil {
		return fmt.Errorf("vision: reading the features: %w", err)
	}
	return copyErr
}

// PrecompileRows compiles the step-input form of the tower (EncodeRows with rows rows)
// for each batch size in buckets. It is what the engine compiles at start-up: one program
// per bucket.
func (e *Encoder) PrecompileRows(rows int, buckets ...int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exec == nil {
		return fmt.Errorf("%w: the encoder is closed", ErrInput)
	}
	T := e.cfg.MMTokensPerImage
	exec, err := e.rowsProgram(rows)
	if err != nil {
		return err
	}
	for _, b := range buckets {
		if b <= 0 || b*T > rows {
			return fmt.Errorf("%w: bucket of %d images (%d soft tokens each) does not fit %d rows", ErrInput, b, T, rows)
		}
		if slices.Contains(e.rowsBuckets[rows], b) {
			continue
		}
		start := time.Now()
		pixels := tensors.FromShape(shapes.Make(e.dtype, b, e.cfg.NumChannels, e.cfg.ImageSize, e.cfg.ImageSize))
		err := exec.PreCompile(e.args(pixels)...)
		pixels.FinalizeAll()
		if err != nil {
			return fmt.Errorf("vision: compiling the encoder for %d images into %d rows: %w", b, rows, err)
		}
		e.rowsBuckets[rows] = append(e.rowsBuckets[rows], b)
		slices.Sort(e.rowsBuckets[rows])
		slog.Info("vision encoder compiled", "images", b, "rows", rows, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// rowsProgram is the program of the step-input form with rows rows (e.mu held).
func (e *Encoder) rowsProgram(rows int) (*graph.Exec, error) {
	if exec, ok := e.rowsExec[rows]; ok {
		return exec, nil
	}
	if rows <= 0 {
		return nil, fmt.Errorf("%w: %d rows", ErrInput, rows)
	}
	numW := len(e.weights.Tensors)
	T, H := e.cfg.MMTokensPerImage, e.cfg.TextHiddenSize
	exec, err := graph.NewExec(e.backend, func(in []*graph.Node) []*graph.Node {
		e.compilations.Add(1)
		f := Encode(&e.cfg, in[:numW], in[numW]) // [N, T, H]
		n := f.Shape().Dimensions[0]
		return []*graph.Node{model.PadRows(graph.Reshape(f, n*T, H), rows)}
	})
	if err != nil {
		return nil, fmt.Errorf("vision: building the encoder program: %w", err)
	}
	exec = exec.WithName(fmt.Sprintf("gemma3_vision_rows%d", rows)).SetMaxCache(MaxBuckets)
	if e.rowsExec == nil {
		e.rowsExec, e.rowsBuckets = map[int]*graph.Exec{}, map[int][]int{}
	}
	e.rowsExec[rows] = exec
	return exec, nil
}

// EncodeRows runs the tower on images in the smallest bucket PrecompileRows(rows, …)
// compiled that holds them, and returns their features as rows [rows, text hidden] in the
// compute dtype, left on the device (image i's soft tokens at rows i·T…, zero rows after
// the last image): the image-embedding input of a step (model.Batch.ImageEmbeds). The
// caller frees the result. It never compiles.
func (e *Encoder) EncodeRows(images [][]float32, rows int) (*tensors.Tensor, error) {
	if len(images) == 0 {
		return nil, fmt.Errorf("%w: no images", ErrInput)
	}
	S, C := e.cfg.ImageSize, e.cfg.NumChannels
	for i, img := range images {
		if len(img) != C*S*S {
			return nil, fmt.Errorf("%w: image %d has %d pixel values, want %d ([%d, %d, %d])", ErrInput, i, len(img), C*S*S, C, S, S)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exec == nil {
		return nil, fmt.Errorf("%w: the encoder is closed", ErrInput)
	}
	bucket := 0
	for _, b := range e.rowsBuckets[rows] {
		if b >= len(images) {
			bucket = b
			break
		}
	}
	if bucket == 0 {
		return nil, fmt.Errorf("%w: %d images into %d rows (compiled: %v)", ErrNotCompiled, len(images), rows, e.rowsBuckets[rows])
	}
	pixels, err := e.pixelTensor(images, bucket)
	if err != nil {
		return nil, err
	}
	defer pixels.FinalizeAll()
	before := e.compilations.Load()
	outs, err := e.rowsExec[rows].Exec(e.args(pixels)...)
	if err != nil {
		return nil, fmt.Errorf("vision: running the encoder for %d images (bucket %d): %w", len(images), bucket, err)
	}
	if e.compilations.Load() != before {
		slog.Warn("vision encoder compiled while serving", "bucket", bucket, "rows", rows)
	}
	return outs[0], nil
}

// pixelTensor packs images into a zero-padded pixel input of bucket images.
func (e *Encoder) pixelTensor(images [][]float32, bucket int) (*tensors.Tensor, error) {
	S, C := e.cfg.ImageSize, e.cfg.NumChannels
	per := C * S * S
	pixels := tensors.FromShape(shapes.Make(e.dtype, bucket, C, S, S))
	if err := pixels.MutableBytes(func(buf []byte) {
		clear(buf)
		for i, img := range images {
			if e.dtype == dtypes.BFloat16 {
				for j, v := range img {
					binary.LittleEndian.PutUint16(buf[2*(i*per+j):], bf16Bits(v))
				}
			} else {
				for j, v := range img {
					binary.LittleEndian.PutUint32(buf[4*(i*per+j):], math.Float32bits(v))
				}
			}
		}
	}); err != nil {
		pixels.FinalizeAll()
		return nil, fmt.Errorf("vision: filling the pixel input: %w", err)
	}
	return pixels, nil
}

// Close frees the compiled programs and the weights.
func (e *Encoder) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exec != nil {
		e.exec.Finalize()
		e.exec = nil
	}
	for _, x := range e.rowsExec {
		x.Finalize()
	}
	e.rowsExec = nil
	if e.weights != nil {
		e.weights.Finalize()
		e.weights = nil
	}
}
