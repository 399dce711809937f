package tokenizer

import (
	"fmt"
	"strings"
)

// ImagePlaceholders are the texts of Gemma 3's image tokens and how many soft tokens an
// image takes: what Gemma3Processor expands each image's <start_of_image> into.
type ImagePlaceholders struct {
	BOI, Soft, EOI string // "<start_of_image>", "<image_soft_token>", "<end_of_image>"
	TokensPerImage int    // mm_tokens_per_image
}

// ImagePlaceholders looks the three image tokens up by id (the config's boi_token_index,
// image_token_index, eoi_token_index).
func (t *Tokenizer) ImagePlaceholders(boi, soft, eoi int32, tokensPerImage int) (ImagePlaceholders, error) {
	var p ImagePlaceholders
	for _, f := range []struct {
		name string
		id   int32
		dst  *string
	}{{"boi_token_index", boi, &p.BOI}, {"image_token_index", soft, &p.Soft}, {"eoi_token_index", eoi, &p.EOI}} {
		s, ok := t.TokenString(f.id)
		if !ok {
			return p, fmt.Errorf("tokenizer: %s %d is outside the vocabulary", f.name, f.id)
		}
		*f.dst = s
	}
	if tokensPerImage <= 0 {
		return p, fmt.Errorf("tokenizer: mm_tokens_per_image %d must be positive", tokensPerImage)
	}
	p.TokensPerImage = tokensPerImage
	return p, nil
}

// ExpandImages rewrites a rendered chat prompt as Hugging Face's Gemma3Processor does
// before tokenization: the BOI text of image i with crops[i] > 0 pan-and-scan crops first
// becomes "Here is the original image <boi> and here are some crops to help you see better
// <boi> <boi> …" (one per crop); then every BOI becomes "\n\n" + BOI + TokensPerImage ×
// Soft + EOI + "\n\n". The prompt must hold exactly one BOI per image (len(crops)), as the
// chat template writes one per image part; otherwise it is an error (a prompt whose own
// text spells the BOI token).
func (p ImagePlaceholders) ExpandImages(text string, crops []int) (string, error) {
	if n := strings.Count(text, p.BOI); n != len(crops) {
		return "", fmt.Errorf("tokenizer: the prompt holds %d %s markers for %d images", n, p.BOI, len(crops))
	}
	var b strings.Builder
	rest := text
	for _, c := range crops {
		i := strings.Index(rest, p.BOI)
		b.WriteString(rest[:i])
		if c > 0 {
			b.WriteString("Here is the original image " + p.BOI + " and here are some crops to help you see better ")
			b.WriteString(strings.TrimSuffix(strings.Repeat(p.BOI+" ", c), " "))
		} else {
			b.WriteString(p.BOI)
		}
		rest = rest[i+len(p.BOI):]
	}
	b.WriteString(rest)
	full := "\n\n" + p.BOI + strings.Repeat(p.Soft, p.TokensPerImage) + p.EOI + "\n\n"
	return strings.ReplaceAll(b.String(), p.BOI, full), nil
}
