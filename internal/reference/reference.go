package reference

import (
	"math"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// Forward returns the logits [T][V] of ids processed as one sequence. weights are host
// tensors (float32 or bfloat16 read as float32) in model.WeightSpecs order.
func Forward(cfg *model.Config, weights []*tensors.Tensor, ids []int32) [][]float64 {
	get := func(i int) []float64 {
		f := tensors.MustCopyFlatData[float32](weights[i])
		out := make([]float64, len(f))
		for j, v := range f {
			out[j] = float64(v)
		}
		return out
	}
	H, D, NH, KV, I := cfg.HiddenSize, cfg.HeadDim, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.IntermediateSize
	T := len(ids)
	embed := get(0)
	x := make([][]float64, T)
	for t, id := range ids {
		x[t] = make([]float64, H)
		for h := 0; h < H; h++ {
			x[t][h] = embed[int(id)*H+h] * float64(float32(math.Sqrt(float64(H))))
		}
	}
	norm := func(v, w []float64) []float64 {
		ss := 0.0
		for _, a := range v {
			ss += a * a
		}
		r := 1 / math.Sqrt(ss/float64(len(v))+cfg.RMSNormEps)
		out := make([]float64, len(v))
		for i := range v {
			out[i] = v[i] * r * (1 + w[i])
		}
		return out
	}
	matvec := func(w []float64, v []float64, out int) []float64 {
		in := len(v)
		res := make([]float64, out)
		for o := 0; o < out; o++ {
			s := 0.0
			for i := 0; i < in; i++ {
				s += w[o*in+i] * v[i]
			}
			res[o] = s
		}
		return res
	}
	ropeApply := func(v []float64, pos int, base, factor float64) {
		half := D / 2
		for i := 0; i < half; i++ {
			ang := float64(pos) / math.Pow(base, float64(2*i)/float64(D)) / factor
			c, s := math.Cos(ang), math.Sin(ang)
			a, b := v[i], v[i+half]
			v[i], v[i+half] = a*c-b*s, b*c+a*s
		}
	}
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		base := 1 + l*13
		inNorm, wq, wk, wv, wo := get(base), get(base+1), get(base+2), get(base+3), get(base+4)
		qn, kn, postAttn, preFF, postFF := get(base+5), get(base+6), get(base+7), get(base+8), get(base+9)
		gate, up, down := get(base+10), get(base+11), get(base+12)
		global := cfg.IsGlobal(l)
		theta, factor := cfg.RopeLocalBaseFreq, 1.0
		if global {
			theta, factor = cfg.RopeTheta, cfg.RopeScalingFactor
		}
		qs := make([][]float64, T)
		ks := make([][]float64, T)
		vs := make([][]float64, T)
		for t := 0; t < T; t++ {
			h := norm(x[t], inNorm)
			q, k, v := matvec(wq, h, NH*D), matvec(wk, h, KV*D), matvec(wv, h, KV*D)
			for hd := 0; hd < NH; hd++ {
				copy(q[hd*D:], norm(q[hd*D:(hd+1)*D], qn))
				ropeApply(q[hd*D:(hd+1)*D], t, theta, factor)
			}
			for hd := 0; hd < KV; hd++ {
				copy(k[hd*D:], norm(k[hd*D:(hd+1)*D], kn))
				ropeApply(k[hd*D:(hd+1)*D], t, theta, factor)
			}
			qs[t], ks[t], vs[t] = q, k, v
		}
		scale := 1 / math.Sqrt(cfg.QueryPreAttnScalar)
		for t := 0; t < T; t++ {
			attn := make([]float64, NH*D)
			for hd := 0; hd < NH; hd++ {
				kvh := hd / (NH / KV)
				lo := 0
				if !global {
					lo = max(0, t-cfg.SlidingWindow+1)
				}
				scores := make([]float64, t+1)
				mx := math.Inf(-1)
				for j := lo; j <= t; j++ {
					s := 0.0
					for e := 0; e < D; e++ {
						s += qs[t][hd*D+e] * ks[j][kvh*D+e]
					}
					scores[j] = s * scale
					mx = math.Max(mx, scores[j])
				}
				sum := 0.0
				for j := lo; j <= t; j++ {
					scores[j] = math.Exp(scores[j] - mx)
					sum += scores[j]
				}
				for j := lo; j <= t; j++ {
					for e := 0; e < D; e++ {
						attn[hd*D+e] += scores[j] / sum * vs[j][kvh*D+e]
					}
				}
			}
			o := norm(matvec(wo, attn, H), postAttn)
			for h := range x[t] {
				x[t][h] += o[h]
			}
			hn := norm(x[t], preFF)
			g, u := matvec(gate, hn, I), matvec(up, hn, I)
			for i := range g {
				gv := g[i]
				g[i] = 0.5 * gv * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(gv+0.044715*gv*gv*gv))) * u[i]
			}
			m := norm(matvec(down, g, H), postFF)
			for h := range x[t] {
				x[t][h] += m[h]
			}
		}
	}
	final := get(len(weights) - 1)
	logits := make([][]float64, T)
	for t := 0; t < T; t++ {
		logits[t] = matvec(embed, norm(x[t], final), cfg.VocabSize)
	}
	return logits
}
