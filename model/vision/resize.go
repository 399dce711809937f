package vision

import "math"

// This file is Pillow's BILINEAR resize of 8-bit images (src/libImaging/Resample.c),
// re-derived: a separable two-pass convolution, horizontal first, each pass rounding to
// uint8. When shrinking, the triangle filter's support is scaled by the shrink factor
// (antialiasing). Coefficients are computed in float64, normalised to sum 1, then turned
// into fixed point with 22 fractional bits; each output is (Σ pixel·coef + 2^21) >> 22,
// clipped to [0, 255].

const precisionBits = 32 - 8 - 2

// resampleCoeffs are the per-output-pixel taps of one axis.
type resampleCoeffs struct {
	ksize  int
	bounds []int   // per output: first input index, number of taps
	k      []int32 // per output: ksize fixed-point coefficients
}

func bilinearFilter(x float64) float64 {
	if x < 0 {
		x = -x
	}
	if x < 1 {
		return 1 - x
	}
	return 0
}

// precomputeCoeffs mirrors precompute_coeffs + normalize_coeffs_8bpc for the box
// [0, inSize). antialias=false fixes the filter scale at 1 (plain bilinear sampling, what
// PIL does not do); it exists for the ablation test.
func precomputeCoeffs(inSize, outSize int, antialias bool) resampleCoeffs {
	scale := float64(float32(inSize)-float32(0)) / float64(outSize)
	filterscale := scale
	if filterscale < 1 || !antialias {
		filterscale = 1
	}
	support := 1.0 * filterscale
	ksize := int(math.Ceil(support))*2 + 1
	c := resampleCoeffs{ksize: ksize, bounds: make([]int, 2*outSize), k: make([]int32, outSize*ksize)}
	kk := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := (float64(xx) + 0.5) * scale
		ss := 1.0 / filterscale
		xmin := int(center - support + 0.5) // C's (int) truncates toward zero, as Go's conversion does
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		xmax -= xmin
		ww := 0.0
		for x := 0; x < xmax; x++ {
			w := bilinearFilter((float64(x+xmin) - center + 0.5) * ss)
			kk[x] = w
			ww += w
		}
		for x := 0; x < ksize; x++ {
			v := 0.0
			if x < xmax {
				v = kk[x]
				if ww != 0 {
					v /= ww
				}
			}
			if v < 0 {
				c.k[xx*ksize+x] = int32(-0.5 + v*(1<<precisionBits))
			} else {
				c.k[xx*ksize+x] = int32(0.5 + v*(1<<precisionBits))
			}
		}
		c.bounds[2*xx], c.bounds[2*xx+1] = xmin, xmax
	}
	return c
}

func clip8(v int32) uint8 {
	v >>= precisionBits // arithmetic shift, as in C for the lookup index
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// resizeBilinear resizes src to w×h as PIL's Image.resize((w, h), BILINEAR) does for mode RGB.
func resizeBilinear(src *rgbImage, w, h int, antialias bool) *rgbImage {
	if src.W == w && src.H == h {
		out := newRGB(w, h)
		copy(out.Pix, src.Pix)
		return out
	}
	cur := src
	if w != src.W {
		cur = resampleHorizontal(cur, w, precomputeCoeffs(src.W, w, antialias))
	}
	if h != src.H {
		cur = resampleVertical(cur, h, precomputeCoeffs(src.H, h, antialias))
	}
	return cur
}

func resampleHorizontal(src *rgbImage, w int, c resampleCoeffs) *rgbImage {
	out := newRGB(w, src.H)
	for y := 0; y < src.H; y++ {
		row := src.Pix[3*y*src.W : 3*(y+1)*src.W]
		orow := out.Pix[3*y*w : 3*(y+1)*w]
		for xx := 0; xx < w; xx++ {
			xmin, n := c.bounds[2*xx], c.bounds[2*xx+1]
			k := c.k[xx*c.ksize : xx*c.ksize+n]
			s0, s1, s2 := int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1))
			for x, kv := range k {
				p := row[3*(xmin+x):]
				s0 += int32(p[0]) * kv
				s1 += int32(p[1]) * kv
				s2 += int32(p[2]) * kv
			}
			orow[3*xx], orow[3*xx+1], orow[3*xx+2] = clip8(s0), clip8(s1), clip8(s2)
		}
	}
	return out
}

func resampleVertical(src *rgbImage, h int, c resampleCoeffs) *rgbImage {
	out := newRGB(src.W, h)
	stride := 3 * src.W
	for yy := 0; yy < h; yy++ {
		ymin, n := c.bounds[2*yy], c.bounds[2*yy+1]
		k := c.k[yy*c.ksize : yy*c.ksize+n]
		orow := out.Pix[yy*stride : (yy+1)*stride]
		for i := 0; i < stride; i++ {
			s := int32(1 << (precisionBits - 1))
			for y, kv := range k {
				s += int32(src.Pix[(ymin+y)*stride+i]) * kv
			}
			orow[i] = clip8(s)
		}
	}
	return out
}
