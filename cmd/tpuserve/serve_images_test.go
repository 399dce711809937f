package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
	"github.com/tpuserve/tpuserve/server/proto/enginepb"
	"github.com/tpuserve/tpuserve/tokenizer"
)

// writeVisionToy writes a random Gemma3ForConditionalGeneration checkpoint: the tiny
// preset's text model (the real tokenizer's vocabulary) with Gemma 3's image token ids
// and a small random SigLIP tower (image 64, patch 8, 16 soft tokens per image), with the
// fixture's preprocessor_config.json.
func writeVisionToy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg, err := model.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := model.WriteCheckpoint(dir, &cfg, w, "language_model.model.", 2); err != nil {
		t.Fatal(err)
	}
	w.Finalize()
	var top map[string]any
	readJSON(t, filepath.Join(dir, "config.json"), &top)
	top["vision_config"] = map[string]any{"model_type": "siglip_vision_model", "hidden_size": 32, "image_size": 64,
		"intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 8, "layer_norm_eps": 1e-6}
	top["mm_tokens_per_image"], top["boi_token_index"], top["eoi_token_index"], top["image_token_index"] = 16, 255999, 256000, 262144
	data, err := json.Marshal(top)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	vcfg, err := vision.ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	vw, err := vision.RandomWeights(&vcfg, dtypes.Float32, 9)
	if err != nil {
		t.Fatal(err)
	}
	defer vw.Finalize()
	named := map[string]*tensors.Tensor{}
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	readJSON(t, filepath.Join(dir, "model.safetensors.index.json"), &idx)
	for i, s := range vw.Specs {
		named[s.Name] = vw.Tensors[i]
		idx.WeightMap[s.Name] = "model-vision.safetensors"
	}
	if err := model.WriteSafetensors(filepath.Join(dir, "model-vision.safetensors"), named); err != nil {
		t.Fatal(err)
	}
	data, _ = json.Marshal(idx)
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	pre, err := os.ReadFile(filepath.Join(visionFixture, "preprocessor_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "preprocessor_config.json"), pre, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func slicesIndex(ids []int32, id int32) int {
	for i, v := range ids {
		if v == id {
			return i
		}
	}
	return -1
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// pngOf is a w×h PNG of one colour with a diagonal stripe of another.
func pngOf(t *testing.T, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, c)
			if (x+y)%7 == 0 {
				img.Set(x, y, color.RGBA{255 - c.R, c.B, c.G, 255})
			}
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dataURL(data []byte) string {
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(data)
}

func imageChat(text, url string) []openai.ChatCompletionMessageParamUnion {
	return []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
		openai.TextContentPart(text),
		openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: url, Detail: "auto"}),
	})}
}

// TestServeImageChat drives `tpuserve serve` on a vision checkpoint with the official
// OpenAI client: a data-URL image chat, streaming and not (the same text; usage counts
// the image's tokens as the Gemma3Processor prompt has them); the same chat among
// text-only requests (batch invariance); a repeated image served from the prefix cache; a
// different image with the same text not; bad image parts answered 400 naming the part,
// the server healthy after them.
func TestServeImageChat(t *testing.T) {
	dir := writeVisionToy(t)
	media := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(pngOf(t, 40, 30, color.RGBA{10, 200, 30, 255}))
	}))
	defer media.Close()
	ls := startServe(t, func(o *serveOptions) {
		o.model, o.maxModelLen, o.maxBatched, o.maxNumSeqs = dir, 256, 64, 8
		o.images.allowedMediaDomains = "127.0.0.1"
		o.images.limitMMPerPrompt = `{"image": 2}`
	})
	client := ls.client()
	ctx := context.Background()
	red, blue := pngOf(t, 100, 60, color.RGBA{220, 20, 20, 255}), pngOf(t, 33, 80, color.RGBA{20, 20, 220, 255})
	params := func(msgs []openai.ChatCompletionMessageParamUnion) openai.ChatCompletionNewParams {
		return openai.ChatCompletionNewParams{Model: dir, Messages: msgs, MaxTokens: openai.Int(8), Temperature: openai.Float(0)}
	}
	ignoreEOS := option.WithJSONSet("ignore_eos", true)
	chat := func(msgs []openai.ChatCompletionMessageParamUnion) *openai.ChatCompletion {
		t.Helper()
		resp, err := client.Chat.Completions.New(ctx, params(msgs), ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	first := chat(imageChat("What is this?", dataURL(red)))
	want := first.Choices[0].Message.Content
	// usage.prompt_tokens: the prompt as Gemma3Processor builds it, 16 soft tokens included.
	tok, err := tokenizer.LoadDir(tokenizerDirForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	text, err := tok.ApplyChatTemplate([]tokenizer.Message{{Role: "user", Parts: []tokenizer.ContentPart{{Type: "text", Text: "What is this?"}, {Type: "image"}}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	ph, _ := tok.ImagePlaceholders(255999, 262144, 256000, 16)
	expanded, _ := ph.ExpandImages(text, []int{0})
	if got, want := first.Usage.PromptTokens, int64(len(tok.Encode(expanded, false))); got != want {
		t.Errorf("usage.prompt_tokens = %d, want %d (the expanded prompt)", got, want)
	}
	if first.Usage.CompletionTokens != 8 || want == "" {
		t.Errorf("completion %q, usage %+v", want, first.Usage)
	}

	// Streaming: the same text.
	stream := client.Chat.Completions.NewStreaming(ctx, params(imageChat("What is this?", dataURL(red))), ignoreEOS)
	streamed := ""
	for stream.Next() {
		if ch := stream.Current().Choices; len(ch) > 0 {
			streamed += ch[0].Delta.Content
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if streamed != want {
		t.Errorf("streamed %q, non-streaming %q", streamed, want)
	}
	// The repeat hit the prefix cache (every block but the last partial one).
	again := chat(imageChat("What is this?", dataURL(red)))
	if again.Choices[0].Message.Content != want || again.Usage.PromptTokensDetails.CachedTokens < first.Usage.PromptTokens-16 {
		t.Errorf("repeated image: %q, cached %d of %d", again.Choices[0].Message.Content, again.Usage.PromptTokensDetails.CachedTokens, first.Usage.PromptTokens)
	}
	// A different image, same text: only the blocks before the image are cached.
	other := chat(imageChat("What is this?", dataURL(blue)))
	imageAt := int64(slicesIndex(tok.Encode(expanded, false), 255999)) // the boi token
	if c := other.Usage.PromptTokensDetails.CachedTokens; c > imageAt {
		t.Errorf("a different image reused %d cached tokens: beyond the image's start at %d", c, imageAt)
	}
	// The image reaches the model: the first token's logprob moves with it.
	lp := func(url string) float64 {
		p := params(imageChat("What is this?", url))
		p.Logprobs = openai.Bool(true)
		r, err := client.Chat.Completions.New(ctx, p, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		return r.Choices[0].Logprobs.Content[0].Logprob
	}
	if a, b := lp(dataURL(red)), lp(dataURL(blue)); a == b {
		t.Errorf("red and blue images give the same first-token logprob %v", a)
	}
	// Batch invariance: the image chat among text-only chats gives the same text.
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = client.Chat.Completions.New(ctx, params([]openai.ChatCompletionMessageParamUnion{openai.UserMessage(fmt.Sprintf("Tell me a story number %d", i))}), ignoreEOS)
		}()
	}
	mixed := chat(imageChat("What is this?", dataURL(blue)))
	wg.Wait()
	if mixed.Choices[0].Message.Content != other.Choices[0].Message.Content {
		t.Errorf("among text requests %q, alone %q", mixed.Choices[0].Message.Content, other.Choices[0].Message.Content)
	}
	// A fetched image from an allowed host.
	if r := chat(imageChat("What is this?", media.URL+"/x.png")); r.Usage.PromptTokens != first.Usage.PromptTokens || r.Choices[0].Message.Content == "" {
		t.Errorf("fetched image: %q, usage %+v", r.Choices[0].Message.Content, r.Usage)
	}

	// The same through gRPC: the rendered chat as text with the image's bytes.
	conn, err := grpc.NewClient(ls.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gen := func(images ...[]byte) (*enginepb.GenerateComplete, error) {
		stream, err := enginepb.NewTpuserveEngineClient(conn).Generate(ctx, &enginepb.GenerateRequest{
			Input:          &enginepb.GenerateRequest_Text{Text: strings.TrimPrefix(text, "<bos>")},
			SamplingParams: &enginepb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(8), IgnoreEos: true},
			Images:         images,
		})
		if err != nil {
			return nil, err
		}
		for {
			msg, err := stream.Recv()
			if err != nil {
				return nil, err
			}
			if c := msg.GetComplete(); c != nil {
				return c, nil
			}
		}
	}
	if done, err := gen(red); err != nil || done.Text != want || int64(done.PromptTokens) != first.Usage.PromptTokens {
		t.Errorf("gRPC with the image: %v %v; want %q with %d prompt tokens", done, err, want, first.Usage.PromptTokens)
	}
	if _, err := gen([]byte("not an image")); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "images[0]") {
		t.Errorf("gRPC with a bad image: %v, want InvalidArgument naming images[0]", err)
	}

	// Bad input: 400 naming the content part.
	gif := []byte("GIF89a\x01\x00\x01\x00") // truncated
	for _, tc := range []struct {
		name  string
		msgs  []openai.ChatCompletionMessageParamUnion
		param string
		text  string
	}{
		{"corrupt base64", imageChat("x", "data:image/png;base64,@@@@"), "messages[0].content[1]", "base64"},
		{"not an image", imageChat("x", dataURL([]byte("hello, this is text"))), "messages[0].content[1]", "image"},
		{"truncated gif", imageChat("x", dataURL(gif)), "messages[0].content[1]", "image"},
		{"unsupported format", imageChat("x", dataURL([]byte("BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00"))), "messages[0].content[1]", "format"},
		{"too large", imageChat("x", dataURL(bytes.Repeat([]byte{0}, 21<<20))), "messages[0].content[1]", "limit"},
		{"disallowed host", imageChat("x", "https://example.com/cat.png"), "messages[0].content[1]", "allowed"},
		{"too many images", []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: dataURL(red)}),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: dataURL(red)}),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: dataURL(red)}),
		})}, "messages[0].content[2]", "at most 2"},
	} {
		_, err := client.Chat.Completions.New(ctx, params(tc.msgs))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != tc.param || !strings.Contains(strings.ToLower(apiErr.Message), tc.text) {
			t.Errorf("%s: %v, want a 400 for %s mentioning %q", tc.name, err, tc.param, tc.text)
		}
	}
	if r := chat(imageChat("What is this?", dataURL(red))); r.Choices[0].Message.Content != want {
		t.Errorf("after the bad requests: %q, want %q", r.Choices[0].Message.Content, want)
	}
	if resp, err := http.Get(ls.url + "/health"); err != nil || resp.StatusCode != 200 {
		t.Errorf("health after bad input: %v %v", resp, err)
	}
}

// TestServeImageTextOnlyModel: an image part sent to a text-only checkpoint is a 400
// naming the part.
func TestServeImageTextOnlyModel(t *testing.T) {
	ls := startServe(t, nil)
	client := ls.client()
	_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.TextContentPart("Describe"),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: dataURL(pngOf(t, 8, 8, color.RGBA{1, 2, 3, 255}))}),
		})}, MaxTokens: openai.Int(2)})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "messages[0].content[1]" || !strings.Contains(apiErr.Message, "takes no images") {
		t.Errorf("image to a text-only model: %v", err)
	}
}
