package engine

// ScheduledSeq is one sequence's share of a step: which tokens to run, where they go in the
// KV page pools and whether to sample after them. All slices are read-only views into
// buffers the scheduler reuses: they are valid until the next Schedule call; copy what
// must live longer, and never modify them.
type ScheduledSeq struct {
	RequestID string
	// TokenIDs are the tokens whose K and V this step computes and writes, at positions
	// StartPos, StartPos+1, … (a prefill chunk, a recomputation after preemption, or the
	// one token sampled last step).
	TokenIDs []int32
	StartPos int
	// GlobalBlocks are the global group's block ids of logical blocks
	// 0..ceil(End()/PageSize)-1: logical block j holds positions [j*PageSize, (j+1)*PageSize).
	// Empty when the model has no global layers.
	GlobalBlocks []int32
	// SlidingBlocks are the sliding group's block ids of logical blocks
	// SlidingFirstBlock..ceil(End()/PageSize)-1, where SlidingFirstBlock =
	// floor(max(0, StartPos-window+1)/PageSize): the blocks the window of this step's
	// queries can reach. Empty when the model has no sliding layers.
	SlidingBlocks     []int32
	SlidingFirstBlock int
	// Sample is true when this step computes the sequence's last known token: sample the
	// next token from the logits of the last position. False for a partial prefill chunk.
	Sample bool
	// NumPromptTokens and NumOutputTokens count the sequence's tokens before this step's
	// sample (the output tokens are those sampled so far, kept across preemption).
	NumPromptTokens int
	NumOutputTokens int
	// NumCachedTokens is how many prompt tokens the prefix cache served at the request's
	// first admission.
	NumCachedTokens int
	// Admitted is true on the first step after the request left the waiting queue (its
	// first admission, or its resumption after a preemption).
	Admitted bool
	// Draft are speculative proposals for the tokens after TokenIDs (a decode only): the step
	// computes their K/V too, at End(), End()+1, …, and verifies them; the scheduler
	// learns which were accepted from UpdateFromOutputSpec. Empty without speculation.
	Draft []int32
}

// End is the position after this step's tokens.
func (s *ScheduledSeq) End() int { return s.StartPos + len(s.TokenIDs) }

// StepPlan is everything the step runner needs for one step, as plain data. The running
// sequences come first, in the order they were admitted, then the newly admitted ones.
type StepPlan struct {
	Seqs []ScheduledSeq
	// Preempted lists requests whose blocks were freed this step; they wait at the front
	// of the queue and will recompute their prompt and outputs. They are not in Seqs.
	Preempted []string
	// NumBatchedTokens is the sum of len(TokenIDs), at most MaxNumBatchedTokens.
	NumBatchedTokens int
	// PageSize is the number of positions per KV block.
	PageSize int
}
