package tokenizer

import (
	"slices"
	"strings"
	"testing"
)

// TestExpandImages: the Gemma3Processor rewrite, as text (crops and plain images).
func TestExpandImages(t *testing.T) {
	p := ImagePlaceholders{BOI: "<B>", Soft: "<s>", EOI: "<E>", TokensPerImage: 2}
	for _, tc := range []struct {
		text  string
		crops []int
		want  string
	}{
		{"a<B>b", []int{0}, "a\n\n<B><s><s><E>\n\nb"},
		{"<B><B>", []int{0, 0}, "\n\n<B><s><s><E>\n\n\n\n<B><s><s><E>\n\n"},
		{"x<B>y", []int{2}, "xHere is the original image \n\n<B><s><s><E>\n\n and here are some crops to help you see better \n\n<B><s><s><E>\n\n \n\n<B><s><s><E>\n\ny"},
		{"no image", nil, "no image"},
	} {
		got, err := p.ExpandImages(tc.text, tc.crops)
		if err != nil || got != tc.want {
			t.Errorf("ExpandImages(%q, %v) = %q, %v; want %q", tc.text, tc.crops, got, err, tc.want)
		}
	}
	if _, err := p.ExpandImages("<B> and <B>", []int{0}); err == nil {
		t.Error("two markers for one image: want an error")
	}
}

// TestImagePromptTokens: a chat with an image part, rendered, expanded and tokenized with
// the real Gemma 3 tokenizer, holds boi, 256 soft tokens and eoi, with "\n\n" on each side
// as Gemma3Processor writes it.
func TestImagePromptTokens(t *testing.T) {
	tok := realTokenizer(t)
	// Gemma 3's ids (config.json of 4B/12B/27B): boi 255999, image 262144, eoi 256000.
	p, err := tok.ImagePlaceholders(255999, 262144, 256000, 256)
	if err != nil {
		t.Fatal(err)
	}
	if p.BOI != "<start_of_image>" || p.EOI != "<end_of_image>" || p.Soft != "<image_soft_token>" {
		t.Fatalf("placeholders %+v", p)
	}
	text, err := tok.ApplyChatTemplate([]Message{{Role: "user", Parts: []ContentPart{{Type: "text", Text: "Describe"}, {Type: "image"}}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "Describe<start_of_image><end_of_turn>") {
		t.Fatalf("rendered %q", text)
	}
	expanded, err := p.ExpandImages(text, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode(expanded, false)
	i := slices.Index(ids, 255999)
	if i < 1 || i+258 > len(ids) || ids[i+257] != 256000 {
		t.Fatalf("no boi…eoi run in %v", ids)
	}
	for k := i + 1; k <= i+256; k++ {
		if ids[k] != 262144 {
			t.Fatalf("position %d: %d, want the soft token", k, ids[k])
		}
	}
	if got, _ := tok.Decode(ids[i-1:i], false); got != "\n\n" {
		t.Errorf("token before boi decodes to %q, want \"\\n\\n\"", got)
	}
	if got, _ := tok.Decode(ids[i+258:i+259], false); !strings.HasPrefix(got, "\n\n") {
		t.Errorf("token after eoi decodes to %q, want it to start with \"\\n\\n\"", got)
	}
}
