package server

import "encoding/json"

// Request bodies. Pointers tell "absent" from zero; unions stay json.RawMessage until
// validation decodes them. Unknown fields are ignored, as vLLM does.

// samplingFields are the parameters /v1/completions and /v1/chat/completions share.
type samplingFields struct {
	Model            string          `json:"model"`
	MaxTokens        *int            `json:"max_tokens"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	N                *int            `json:"n"`
	Stream           bool            `json:"stream"`
	StreamOptions    *streamOptions  `json:"stream_options"`
	Stop             json.RawMessage `json:"stop"`
	Seed             *int64          `json:"seed"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	LogitBias        map[string]any  `json:"logit_bias"`
	User             string          `json:"user"`
	ResponseFormat   *responseFormat `json:"response_format"`

	// vLLM's extras.
	TopK                   *int     `json:"top_k"`
	MinP                   *float64 `json:"min_p"`
	RepetitionPenalty      *float64 `json:"repetition_penalty"`
	IgnoreEOS              bool     `json:"ignore_eos"`
	MinTokens              *int     `json:"min_tokens"`
	SkipSpecialTokens      *bool    `json:"skip_special_tokens"`
	IncludeStopStrInOutput bool     `json:"include_stop_str_in_output"`
	ReturnTokensAsTokenIDs bool     `json:"return_tokens_as_token_ids"`
	StopTokenIDs           []int64  `json:"stop_token_ids"`
	Priority               int      `json:"priority"`
	PromptLogprobs         *int     `json:"prompt_logprobs"`
	TruncatePromptTokens   *int     `json:"truncate_prompt_tokens"`
	BestOf                 *int     `json:"best_of"`

	// Structured outputs: vLLM's structured_outputs and the older guided_* fields.
	StructuredOutputs *structuredOutputs `json:"structured_outputs"`
	GuidedJSON        json.RawMessage    `json:"guided_json"`
	GuidedRegex       *string            `json:"guided_regex"`
	GuidedChoice      []string           `json:"guided_choice"`
	GuidedGrammar     *string            `json:"guided_grammar"`
}

// structuredOutputs is vLLM's structured_outputs object: exactly one of its constraints.
type structuredOutputs struct {
	JSON    json.RawMessage `json:"json"`
	Regex   *string         `json:"regex"`
	Choice  []string        `json:"choice"`
	Grammar *string         `json:"grammar"`
}

type streamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

type responseFormat struct {
	Type       string          `json:"type"`
	JSONSchema *jsonSchemaSpec `json:"json_schema"`
}

// jsonSchemaSpec is response_format's json_schema: {name, schema, strict}.
type jsonSchemaSpec struct {
	Name   string          `json:"name"`
	Schema json.RawMessage `json:"schema"`
	Strict *bool           `json:"strict"`
}

type completionRequest struct {
	samplingFields
	Prompt           json.RawMessage `json:"prompt"`
	Suffix           *string         `json:"suffix"`
	Logprobs         *int            `json:"logprobs"`
	Echo             bool            `json:"echo"`
	AddSpecialTokens *bool           `json:"add_special_tokens"`
}

type chatRequest struct {
	samplingFields
	Messages             []chatMessageIn `json:"messages"`
	MaxCompletionTokens  *int            `json:"max_completion_tokens"`
	Logprobs             bool            `json:"logprobs"`
	TopLogprobs          *int            `json:"top_logprobs"`
	Echo                 bool            `json:"echo"`
	AddGenerationPrompt  *bool           `json:"add_generation_prompt"`
	ContinueFinalMessage bool            `json:"continue_final_message"`
	AddSpecialTokens     bool            `json:"add_special_tokens"`
	ChatTemplate         *string         `json:"chat_template"`
	Tools                json.RawMessage `json:"tools"`
	ToolChoice           json.RawMessage `json:"tool_choice"`
	Functions            json.RawMessage `json:"functions"`
	FunctionCall         json.RawMessage `json:"function_call"`
	ParallelToolCalls    *bool           `json:"parallel_tool_calls"`
}

type chatMessageIn struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCalls  json.RawMessage `json:"tool_calls"`
	ToolCallID string          `json:"tool_call_id"`
}

type contentPartIn struct {
	Type     string      `json:"type"`
	Text     *string     `json:"text"`
	ImageURL *imageURLIn `json:"image_url"`
}

// imageURLIn is OpenAI's image_url object ({"url": …, "detail": "auto"|"low"|"high"}).
// detail is accepted and ignored: Gemma 3 sees every image at one resolution.
type imageURLIn struct {
	URL    string `json:"url"`
	Detail string `json:"detail"`
}

type tokenizeRequest struct {
	Model               string          `json:"model"`
	Prompt              *string         `json:"prompt"`
	Messages            []chatMessageIn `json:"messages"`
	AddSpecialTokens    *bool           `json:"add_special_tokens"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	ReturnTokenStrs     bool            `json:"return_token_strs"`
}

type detokenizeRequest struct {
	Model  string          `json:"model"`
	Tokens json.RawMessage `json:"tokens"`
}

// Response bodies, shaped as OpenAI's (and vLLM's for the extras).

type usageInfo struct {
	PromptTokens        int                 `json:"prompt_tokens"`
	TotalTokens         int                 `json:"total_tokens"`
	CompletionTokens    int                 `json:"completion_tokens"`
	PromptTokensDetails *promptTokensDetail `json:"prompt_tokens_details,omitempty"`
}

type promptTokensDetail struct {
	CachedTokens int `json:"cached_tokens"`
}

type completionResponse struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   *usageInfo         `json:"usage,omitempty"`
}

type completionChoice struct {
	Index    int                 `json:"index"`
	Text     string              `json:"text"`
	Logprobs *completionLogprobs `json:"logprobs"`
	// PromptLogprobs is vLLM's prompt_logprobs: null for the first prompt token, then per
	// position the prompt token and the top alternatives by token id.
	PromptLogprobs []map[string]promptLogprob `json:"prompt_logprobs,omitempty"`
	FinishReason   *string                    `json:"finish_reason"`
	// StopReason is vLLM's: the stop string or stop token id that ended the choice.
	StopReason stopReason `json:"stop_reason"`
}

type completionLogprobs struct {
	TextOffset    []int                `json:"text_offset"`
	TokenLogprobs []*float64           `json:"token_logprobs"` // null for the prompt's first token (echo)
	Tokens        []string             `json:"tokens"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
}

type chatResponse struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	// PromptLogprobs is vLLM's prompt_logprobs (as completionChoice's).
	PromptLogprobs []map[string]promptLogprob `json:"prompt_logprobs,omitempty"`
	// SystemFingerprint names the server build and model, as OpenAI's does.
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []chatChoice `json:"choices"`
	Usage             *usageInfo   `json:"usage,omitempty"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      *chatMessageOut `json:"message,omitempty"`
	Delta        *chatDelta      `json:"delta,omitempty"`
	Logprobs     *chatLogprobs   `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   stopReason      `json:"stop_reason"`
}

type chatMessageOut struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// Refusal is always null (the model's refusals are plain content), as OpenAI sends it.
	Refusal   *string       `json:"refusal"`
	ToolCalls []toolCallOut `json:"tool_calls"`
	// nullContent writes "content": null (a message that is only tool calls).
	nullContent bool
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
	// Refusal is "refusal": null in a choice's first delta (with the role), as OpenAI
	// sends it; absent after.
	Refusal   json.RawMessage `json:"refusal,omitempty"`
	ToolCalls []toolCallDelta `json:"tool_calls,omitempty"`
}

// jsonNull is a JSON null that omitempty keeps.
var jsonNull = json.RawMessage("null")

type chatLogprobs struct {
	Content []chatTokenLogprob `json:"content"`
}

type chatTokenLogprob struct {
	Token       string           `json:"token"`
	Logprob     float64          `json:"logprob"`
	Bytes       []int            `json:"bytes"`
	TopLogprobs []chatTopLogprob `json:"top_logprobs"`
}

type chatTopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

type modelList struct {
	Object string      `json:"object"`
	Data   []modelCard `json:"data"`
}

type modelCard struct {
	ID          string            `json:"id"`
	Object      string            `json:"object"`
	Created     int64             `json:"created"`
	OwnedBy     string            `json:"owned_by"`
	Root        string            `json:"root"`
	Parent      *string           `json:"parent"`
	MaxModelLen int               `json:"max_model_len"`
	Permission  []modelPermission `json:"permission"`
}

type modelPermission struct {
	ID                 string  `json:"id"`
	Object             string  `json:"object"`
	Created            int64   `json:"created"`
	AllowCreateEngine  bool    `json:"allow_create_engine"`
	AllowSampling      bool    `json:"allow_sampling"`
	AllowLogprobs      bool    `json:"allow_logprobs"`
	AllowSearchIndices bool    `json:"allow_search_indices"`
	AllowView          bool    `json:"allow_view"`
	AllowFineTuning    bool    `json:"allow_fine_tuning"`
	Organization       string  `json:"organization"`
	Group              *string `json:"group"`
	IsBlocking         bool    `json:"is_blocking"`
}

type tokenizeResponse struct {
	Count       int      `json:"count"`
	MaxModelLen int      `json:"max_model_len"`
	Tokens      []int32  `json:"tokens"`
	TokenStrs   []string `json:"token_strs"`
}

type detokenizeResponse struct {
	Prompt string `json:"prompt"`
}

// promptLogprob is one entry of vLLM's prompt_logprobs: {logprob, rank, decoded_token}.
type promptLogprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         int     `json:"rank"`
	DecodedToken string  `json:"decoded_token"`
}
