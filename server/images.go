package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tpuserve/tpuserve/engine"
)

// ImageInput is a vision model's image handling (Config.Images): the integrator adapts the
// vision package's Processor and the tokenizer's Gemma3Processor expansion to it.
type ImageInput interface {
	// Preprocess turns one image's encoded bytes into the engine's images: the image, then
	// its pan-and-scan crops when the preprocessor makes them. Its errors are the client's
	// (corrupt data, not an image, an unsupported format, too large): a 400.
	Preprocess(data []byte) ([]engine.Image, error)
	// ExpandPrompt rewrites a rendered chat prompt as Gemma3Processor does before
	// tokenization; crops[i] is the number of crops of image i (len(images) − 1).
	ExpandPrompt(text string, crops []int) (string, error)
}

// Defaults of the image settings.
const (
	DefaultMaxImagesPerPrompt = 16
	DefaultMaxImageBytes      = 20 << 20
	DefaultMediaFetchTimeout  = 10 * time.Second
)

// chatImage is an image part of a chat: where it was and what it points at.
type chatImage struct {
	param string // messages[i].content[j]
	url   string
}

// chatImages lists msgs' image parts in prompt order.
func chatImages(msgs []ChatMessage) []chatImage {
	var out []chatImage
	for _, m := range msgs {
		for _, p := range m.Parts {
			if p.Type == "image" {
				out = append(out, chatImage{param: p.Param, url: p.ImageURL})
			}
		}
	}
	return out
}

// loadImages fetches and preprocesses a chat's images, in prompt order; crops[i] is image
// part i's crop count. Every failure is a 400 naming the content part.
func (s *Server) loadImages(msgs []ChatMessage) (images []engine.Image, crops []int, e *APIError) {
	parts := chatImages(msgs)
	if len(parts) == 0 {
		return nil, nil, nil
	}
	if s.cfg.Images == nil {
		return nil, nil, badParam(parts[0].param, "%s is an image, but the model %s takes no images (a text-only checkpoint)", parts[0].param, s.cfg.ServedModelNames[0])
	}
	if limit := s.cfg.MaxImagesPerPrompt; len(parts) > limit {
		p := parts[limit].param
		return nil, nil, badParam(p, "%s: at most %d images per prompt (--limit-mm-per-prompt), this prompt has %d", p, limit, len(parts))
	}
	for _, part := range parts {
		data, e := s.imageBytes(part)
		if e != nil {
			return nil, nil, e
		}
		imgs, err := s.cfg.Images.Preprocess(data)
		if err != nil {
			return nil, nil, badParam(part.param, "%s: the image cannot be used: %v", part.param, err)
		}
		images = append(images, imgs...)
		crops = append(crops, len(imgs)-1)
	}
	return images, crops, nil
}

// imageBytes reads an image part's bytes: a data URL (base64), or an http(s) URL whose
// host is in AllowedMediaDomains, fetched within MediaFetchTimeout and MaxImageBytes.
func (s *Server) imageBytes(part chatImage) ([]byte, *APIError) {
	p, raw := part.param, part.url
	limit := s.cfg.MaxImageBytes
	if rest, ok := strings.CutPrefix(raw, "data:"); ok {
		meta, payload, ok := strings.Cut(rest, ",")
		if !ok || !strings.HasSuffix(meta, ";base64") {
			return nil, badParam(p, "%s: a data URL must be data:image/…;base64,…", p)
		}
		if mt := strings.TrimSuffix(meta, ";base64"); mt != "" && !strings.HasPrefix(mt, "image/") {
			return nil, badParam(p, "%s: the data URL's media type %q is not an image", p, truncate(mt, 40))
		}
		if int64(base64.StdEncoding.DecodedLen(len(payload))) > limit+3 {
			return nil, badParam(p, "%s: the image is over the %d-byte limit", p, limit)
		}
		data, err := base64.StdEncoding.DecodeString(payload)
		if err != nil {
			// Some clients send unpadded or URL-safe base64.
			if data, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(payload, "=")); err != nil {
				return nil, badParam(p, "%s: the data URL is not valid base64: %v", p, err)
			}
		}
		if int64(len(data)) > limit {
			return nil, badParam(p, "%s: the image is %d bytes, over the %d-byte limit", p, len(data), limit)
		}
		return data, nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, badParam(p, "%s: the image url must be a data:image/…;base64 URL or an http(s) URL", p)
	}
	if !slices.Contains(s.cfg.AllowedMediaDomains, strings.ToLower(u.Hostname())) {
		return nil, badParam(p, "%s: fetching images from %q is not allowed (--allowed-media-domains)", p, truncate(u.Hostname(), 80))
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MediaFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, badParam(p, "%s: %v", p, err)
	}
	client := s.cfg.MediaClient
	if client == nil {
		client = &http.Client{CheckRedirect: s.allowedRedirect}
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, badParam(p, "%s: fetching the image took longer than %s", p, s.cfg.MediaFetchTimeout)
		}
		return nil, badParam(p, "%s: fetching the image failed: %v", p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, badParam(p, "%s: fetching the image: HTTP %d", p, resp.StatusCode)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(resp.Body, limit+1)); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, badParam(p, "%s: fetching the image took longer than %s", p, s.cfg.MediaFetchTimeout)
		}
		return nil, badParam(p, "%s: reading the image failed: %v", p, err)
	}
	if int64(buf.Len()) > limit {
		return nil, badParam(p, "%s: the image is over the %d-byte limit", p, limit)
	}
	return buf.Bytes(), nil
}

// allowedRedirect follows a redirect only to an allowed host.
func (s *Server) allowedRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("too many redirects")
	}
	if !slices.Contains(s.cfg.AllowedMediaDomains, strings.ToLower(req.URL.Hostname())) {
		return fmt.Errorf("redirect to %q, which --allowed-media-domains does not list", req.URL.Hostname())
	}
	return nil
}

// grpcImages preprocesses a gRPC request's encoded images (images[k] names the bad one).
func (s *Server) grpcImages(data [][]byte) (images []engine.Image, crops []int, e *APIError) {
	if len(data) == 0 {
		return nil, nil, nil
	}
	if s.cfg.Images == nil {
		return nil, nil, badParam("images[0]", "images[0]: the model %s takes no images (a text-only checkpoint)", s.cfg.ServedModelNames[0])
	}
	if limit := s.cfg.MaxImagesPerPrompt; len(data) > limit {
		p := fmt.Sprintf("images[%d]", limit)
		return nil, nil, badParam(p, "%s: at most %d images per prompt (--limit-mm-per-prompt), the request has %d", p, limit, len(data))
	}
	for k, d := range data {
		p := fmt.Sprintf("images[%d]", k)
		if int64(len(d)) > s.cfg.MaxImageBytes {
			return nil, nil, badParam(p, "%s: the image is %d bytes, over the %d-byte limit", p, len(d), s.cfg.MaxImageBytes)
		}
		imgs, err := s.cfg.Images.Preprocess(d)
		if err != nil {
			return nil, nil, badParam(p, "%s: the image cannot be used: %v", p, err)
		}
		images = append(images, imgs...)
		crops = append(crops, len(imgs)-1)
	}
	return images, crops, nil
}
