package server

import (
	"context"
	"github.com/tpuserve/tpuserve/engine/grammar"

	"github.com/tpuserve/tpuserve/engine"
)

// Engine is what the server needs from the inference engine.
//
// A final Event with Err set (a detokenizer failure, a device error) is answered as an
// error: an OpenAI error object (non-streaming), an SSE error event (streaming), a gRPC
// error message and status; never as an abort.
//
// Submit queues one request and returns its event stream. The channel is closed after the
// final event (Finished or Err set). Cancelling ctx aborts the request at the engine's next
// step; the engine still sends a final event (FinishAbort) and closes the channel. Submit
// errors that wrap ErrQueueFull, ErrRequestTooLarge, ErrInvalidRequest or ErrShuttingDown
// are answered 429, 400, 400 and 503; any other error is a 500 with its text logged, not
// sent.
type Engine interface {
	Submit(ctx context.Context, req engine.Request) (<-chan engine.Event, error)
	Stats() engine.Stats
}

// HealthChecker is optionally implemented by an Engine: /health, the gRPC HealthCheck and
// grpc.health.v1 report unhealthy while Health returns an error.
type HealthChecker interface {
	Health() error
}

// StepObserver is optionally implemented by an Engine: the server calls SetStepObserver
// once, when it gets the engine, with a function the engine then calls after every step
// with the number of tokens the step computed (prompt and generated, all requests
// together). It feeds vllm:iteration_tokens_total. The function is safe for concurrent use
// and returns at once.
type StepObserver interface {
	SetStepObserver(observe func(tokens int))
}

// Tokenizer is what the server needs from the tokenizer.
type Tokenizer interface {
	// Encode tokenizes text; addSpecialTokens prepends BOS as the model expects.
	Encode(text string, addSpecialTokens bool) []int32
	// Decode turns ids into text; ids outside the vocabulary are an error.
	Decode(ids []int32, skipSpecialTokens bool) (string, error)
	VocabSize() int
	// TokenString is the raw vocabulary piece of id ("▁Hello", "<0x0A>", "<bos>"), as HF's
	// convert_ids_to_tokens; ok is false outside the vocabulary. It fills /tokenize's
	// token_strs. (Logprobs name tokens by decoding each one alone, as vLLM does.)
	TokenString(id int32) (s string, ok bool)
	// ApplyChatTemplate renders messages with the model's chat template. The result starts
	// with the BOS token's text, so the server encodes it with addSpecialTokens=false. An
	// error (say, roles that do not alternate) is answered 400 with its text.
	ApplyChatTemplate(msgs []ChatMessage, addGenerationPrompt bool) (string, error)
}

// ChatMessage is one message of a chat, as the chat template sees it. It mirrors
// tokenizer.Message so that the integrator's adapter is a field-by-field copy.
type ChatMessage struct {
	// Role is "system", "user" or "assistant" ("developer" arrives as "system").
	Role string
	// Content is the message's text when it was sent as a string (Parts is nil then).
	Content string
	// Parts is the message's content when it was sent as an array of parts.
	Parts []ContentPart
	// ToolCalls are an assistant message's function calls; Role "tool" is a function's
	// result. Both only reach a ToolTemplater.
	ToolCalls []ToolCall
}

// ToolCall is one function call of an assistant message: the name and the arguments as
// the text of a JSON object.
type ToolCall struct {
	Name      string
	Arguments string
}

// ToolTemplater is optionally implemented by a Tokenizer: it renders chats with tools
// (each the JSON text of one OpenAI tool object), assistant tool calls and "tool"
// messages. Without it, such chat requests are refused with 400.
type ToolTemplater interface {
	ApplyToolChatTemplate(msgs []ChatMessage, tools [][]byte, addGenerationPrompt bool) (string, error)
}

// ContentPart is one part of a message sent as an array: "text" (Text), or "image" (an
// image_url part: the template writes the image's marker; ImageURL and Param, the part's
// place in the request, are the server's, the tokenizer adapter copies Type and Text).
type ContentPart struct {
	Type string
	Text string
	// ImageURL is an image part's url (data: or http(s)); Param is "messages[i].content[j]".
	ImageURL, Param string
}

// GrammarCompiler compiles structured-output constraints over the model's vocabulary
// (the integrator passes a *grammar.Cache; nil: structured outputs are refused with 400).
type GrammarCompiler interface {
	JSONSchema(schema []byte, opts ...grammar.Option) (*grammar.Grammar, error)
	Regex(pattern string, opts ...grammar.Option) (*grammar.Grammar, error)
	Choice(choices []string, opts ...grammar.Option) (*grammar.Grammar, error)
	GBNF(src string, opts ...grammar.Option) (*grammar.Grammar, error)
}
