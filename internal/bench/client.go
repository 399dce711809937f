package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// RequestOutput is what one request measured, with vLLM's definitions.
type RequestOutput struct {
	Success bool
	Error   string
	// PromptLen is the server's usage.prompt_tokens, or the dataset's length without usage.
	PromptLen int
	// OutputTokens is the server's usage.completion_tokens (0 when no usage arrived).
	OutputTokens  int
	UsageReported bool
	// Start is when the request was sent; QueueTime how long it waited for a free slot
	// under --max-concurrency before that.
	Start     time.Time
	QueueTime time.Duration
	// TTFT is the time to the first event carrying a choice; ITL the gaps between
	// consecutive such events; Latency the time to the last such event.
	TTFT          time.Duration
	ITL           []time.Duration
	Latency       time.Duration
	GeneratedText string
}

// completionRequest is the body vLLM's openai backend sends (without the fields whose
// value is the API's default: logprobs null, repetition_penalty 1).
type completionRequest struct {
	Model         string         `json:"model"`
	Prompt        any            `json:"prompt"`
	MaxTokens     int            `json:"max_tokens"`
	Stream        bool           `json:"stream"`
	StreamOptions map[string]any `json:"stream_options"`
	IgnoreEOS     bool           `json:"ignore_eos,omitempty"`
}

// streamChunk is the part of a completions stream event the benchmark reads.
type streamChunk struct {
	Choices []struct {
		Text  *string `json:"text"`
		Delta *struct {
			Content *string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     *int `json:"prompt_tokens"`
		CompletionTokens int  `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

type client struct {
	http      *http.Client
	url       string
	model     string
	apiKey    string
	ignoreEOS bool
}

// do sends one streaming completion and times it. It never returns an error: failures are
// recorded in the output, as vLLM records them.
func (c *client) do(ctx context.Context, req SampleRequest) RequestOutput {
	out := RequestOutput{PromptLen: req.PromptLen}
	body, err := json.Marshal(completionRequest{
		Model: c.model, Prompt: req.Prompt, MaxTokens: req.ExpectedOutputLen, Stream: true,
		StreamOptions: map[string]any{"include_usage": true}, IgnoreEOS: c.ignoreEOS,
	})
	if err != nil {
		out.Error = "encode request: " + err.Error()
		return out
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		out.Error = err.Error()
		return out
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	if c.apiKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.apiKey)
	}

	start := time.Now()
	out.Start = start
	resp, err := c.http.Do(hreq)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		out.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(msg)))
		return out
	}

	var text strings.Builder
	first := true
	last := start
	handle := func(data []byte) (done bool, err error) {
		if string(data) == "[DONE]" {
			return true, nil
		}
		var ch streamChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			return false, fmt.Errorf("bad stream event %.80q: %w", data, err)
		}
		if len(ch.Error) > 0 && string(ch.Error) != "null" {
			return false, fmt.Errorf("server error in stream: %s", ch.Error)
		}
		if len(ch.Choices) > 0 {
			// Any event with a choice counts as a token event, even with empty text
			// (special tokens), exactly like vLLM's request function.
			now := time.Now()
			if first {
				first = false
				out.TTFT = now.Sub(start)
			} else {
				out.ITL = append(out.ITL, now.Sub(last))
			}
			last = now
			if t := ch.Choices[0].Text; t != nil {
				text.WriteString(*t)
			} else if d := ch.Choices[0].Delta; d != nil && d.Content != nil {
				text.WriteString(*d.Content)
			}
		} else if ch.Usage != nil {
			out.OutputTokens = ch.Usage.CompletionTokens
			out.UsageReported = true
			if ch.Usage.PromptTokens != nil {
				out.PromptLen = *ch.Usage.PromptTokens
			}
		}
		return false, nil
	}
	if err := readSSE(resp.Body, handle); err != nil {
		out.Error = err.Error()
		return out
	}
	out.GeneratedText = text.String()
	if first {
		out.Error = "never received a chunk with a choice to time the first token"
		return out
	}
	out.Latency = last.Sub(start)
	out.Success = true
	return out
}

// errStop ends readSSE early without an error.
var errStop = errors.New("stop")

// readSSE reads server-sent events and calls handle with each event's data (data lines
// joined by "\n") when its terminating blank line arrives. Comment lines (":") and other
// fields are skipped. It returns at the end of the stream or when handle reports done.
func readSSE(r io.Reader, handle func(data []byte) (done bool, err error)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var data []byte
	pending := false
	dispatch := func() error {
		if !pending {
			return nil
		}
		pending = false
		done, err := handle(data)
		data = data[:0]
		if err != nil {
			return err
		}
		if done {
			return errStop
		}
		return nil
	}
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			switch {
			case len(line) == 0:
				if derr := dispatch(); derr != nil {
					return ignoreStop(derr)
				}
			case line[0] == ':':
			case bytes.HasPrefix(line, []byte("data:")):
				v := bytes.TrimPrefix(line[5:], []byte(" "))
				if pending {
					data = append(data, '\n')
				}
				data = append(data, v...)
				pending = true
			}
		}
		if err == io.EOF {
			return ignoreStop(dispatch())
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
	}
}

func ignoreStop(err error) error {
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}
