/* augment.c -- training-time data augmentation: random crop of the zero-padded image and a
 * random horizontal flip (torchvision RandomCrop(size, padding) + RandomHorizontalFlip, as the
 * seed recipes use for CIFAR and SVHN).  Deterministic from the run's generator. */
#include "train.h"

#include <string.h>

void tk_augment_batch(float *x, int n, int c, int h, int w, int pad, int flip, tk_rng *rng, float *tmp) {
  size_t plane = (size_t)h * w, img = (size_t)c * plane;
  for (int i = 0; i < n; i++) {
    float *im = x + (size_t)i * img; /* (c, h, w) */
    int top = pad, left = pad, mirror = 0;
    if (pad > 0) {
      top = (int)tk_rng_below(rng, (uint64_t)(2 * pad + 1));
      left = (int)tk_rng_below(rng, (uint64_t)(2 * pad + 1));
    }
    if (flip) mirror = tk_rng_uniform(rng) < 0.5;
    if (top == pad && left == pad && !mirror) continue;
    /* output (r, s) reads padded (top + r, left + s) = original (top + r - pad, left + s - pad);
     * with the flip it reads column w-1-s of the crop */
    for (int ch = 0; ch < c; ch++) {
      const float *src = im + ch * plane;
      float *dst = tmp + ch * plane;
      for (int r = 0; r < h; r++) {
        int sr = top + r - pad;
        for (int s = 0; s < w; s++) {
          int cs = mirror ? w - 1 - s : s;
          int sc = left + cs - pad;
          dst[(size_t)r * w + s] = (sr >= 0 && sr < h && sc >= 0 && sc < w) ? src[(size_t)sr * w + sc] : 0.0f;
        }
      }
    }
    memcpy(im, tmp, img * sizeof(float));
  }
}
