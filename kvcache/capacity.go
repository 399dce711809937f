package kvcache

import "fmt"

// MemorySpec describes the device page pools, per device: with tensor parallelism KVHeads
// is the number of KV heads each device holds and the budget is per device.
type MemorySpec struct {
	PageSize         int
	NumGlobalLayers  int
	NumSlidingLayers int
	KVHeads          int
	HeadDim          int
	DTypeBytes       int // 2 for bf16, 4 for f32; 1 for an int8 / fp8 cache
	// ScaleBytes is a quantized cache's scale per position and kv head (the compute dtype's
	// size: 2 for bf16), stored beside the 1-byte K and V; 0 for an unquantized cache.
	ScaleBytes    int
	SlidingWindow int // required with sliding layers

	// MaxNumSeqs and MaxNumBatchedTokens bound what the running batch can hold in the
	// sliding group; MaxModelLen (optional, 0 = unbounded) tightens that bound.
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	MaxModelLen         int

	EnablePrefixCaching bool
}

func (s MemorySpec) validate() error {
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"PageSize", s.PageSize, 1}, {"NumGlobalLayers", s.NumGlobalLayers, 0},
		{"NumSlidingLayers", s.NumSlidingLayers, 0}, {"KVHeads", s.KVHeads, 1},
		{"HeadDim", s.HeadDim, 1}, {"DTypeBytes", s.DTypeBytes, 1}, {"ScaleBytes", s.ScaleBytes, 0},
		{"MaxNumSeqs", s.MaxNumSeqs, 1}, {"MaxNumBatchedTokens", s.MaxNumBatchedTokens, 1},
		{"MaxModelLen", s.MaxModelLen, 0},
	} {
		if f.v < f.min {
			return fmt.Errorf("%w: MemorySpec.%s %d must be >= %d", ErrInvalid, f.name, f.v, f.min)
		}
	}
	if s.NumGlobalLayers+s.NumSlidingLayers == 0 {
		return fmt.Errorf("%w: MemorySpec has no layers (NumGlobalLayers and NumSlidingLayers are 0)", ErrInvalid)
	}
	if s.NumSlidingLayers > 0 && s.SlidingWindow <= 0 {
		return fmt.Errorf("%w: MemorySpec.SlidingWindow %d must be > 0 with sliding layers", ErrInvalid, s.SlidingWindow)
	}
	return nil
}

// BlockBytes returns the device bytes of one block id in each group: the K and V pages of
// every layer of the group (and their scales),
// numLayers × 2 × PageSize × KVHeads × (HeadDim × DTypeBytes + ScaleBytes).
func (s MemorySpec) BlockBytes() (global, sliding int64) {
	perLayer := 2 * int64(s.PageSize) * int64(s.KVHeads) * (int64(s.HeadDim)*int64(s.DTypeBytes) + int64(s.ScaleBytes))
	return int64(s.NumGlobalLayers) * perLayer, int64(s.NumSlidingLayers) * perLayer
}

// MaxSlidingBlocks is the most sliding blocks (null block excluded) the running batch can
// hold during a step: each of MaxNumSeqs sequences reads at most ceil((window-1)/PageSize)
// blocks before its chunk plus one partial block at each end, and the chunks together
// cover at most MaxNumBatchedTokens positions:
//
//	MaxNumSeqs × (ceil((window−1)/PageSize) + 2) + ceil(MaxNumBatchedTokens/PageSize)
//
// capped by MaxNumSeqs × ceil(MaxModelLen/PageSize) when MaxModelLen is set. (This is
// tighter than MaxNumSeqs × (ceil((window+MaxNumBatchedTokens)/PageSize)+1), which counts
// the whole token budget once per sequence.)
func (s MemorySpec) MaxSlidingBlocks() int {
	n := s.MaxNumSeqs*(ceilDiv(s.SlidingWindow-1, s.PageSize)+2) + ceilDiv(s.MaxNumBatchedTokens, s.PageSize)
	if s.MaxModelLen > 0 {
		n = min(n, s.MaxNumSeqs*ceilDiv(s.MaxModelLen, s.PageSize))
	}
	return n
}

// ConfigForBudget splits a byte budget (per device) between the two groups and returns
// the Manager configuration. The rule:
//
//   - one group only: it gets the whole budget;
//   - both: with n = budget / (globalBlockBytes + slidingBlockBytes), the sliding group
//     gets min(n, MaxSlidingBlocks()+1) blocks and the global group the rest of the
//     budget. Equal counts suit sequences shorter than the window (they use as many blocks
//     in both groups); the cap stops the sliding group from growing past what the batch
//     can ever hold, so a large budget goes to long contexts in the global group.
//
// Block counts include the null block. The budget must buy at least two blocks per group.
func ConfigForBudget(budget int64, s MemorySpec) (Config, error) {
	if err := s.validate(); err != nil {
		return Config{}, err
	}
	if budget <= 0 {
		return Config{}, fmt.Errorf("%w: KV cache budget %d bytes must be > 0", ErrInvalid, budget)
	}
	gB, sB := s.BlockBytes()
	cfg := Config{PageSize: s.PageSize, EnablePrefixCaching: s.EnablePrefixCaching}
	var global, sliding int64
	switch {
	case s.NumSlidingLayers == 0:
		global = budget / gB
	case s.NumGlobalLayers == 0:
		sliding = budget / sB
	default:
		sliding = min(budget/(gB+sB), int64(s.MaxSlidingBlocks())+1)
		global = (budget - sliding*sB) / gB
	}
	const maxBlocks = 1<<31 - 1
	global, sliding = min(global, maxBlocks), min(sliding, maxBlocks)
	if (s.NumGlobalLayers > 0 && global < 2) || (s.NumSlidingLayers > 0 && sliding < 2) {
		return Config{}, fmt.Errorf("%w: KV cache budget %d bytes buys %d global and %d sliding blocks (blocks of %d and %d bytes); need at least 2 per group",
			ErrInvalid, budget, global, sliding, gB, sB)
	}
	cfg.NumGlobalBlocks, cfg.NumSlidingBlocks = int(global), int(sliding)
	if s.NumSlidingLayers > 0 {
		cfg.SlidingWindow = s.SlidingWindow
	}
	return cfg, nil
}
