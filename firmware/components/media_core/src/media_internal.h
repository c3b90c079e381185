/*
 * media_internal.h - what the files of the media core share. Not installed.
 */
#ifndef MEDIA_INTERNAL_H
#define MEDIA_INTERNAL_H

#include "media_core.h"

#define MC_G711_RATE  8000u
#define MC_G711_FRAME (MC_G711_RATE / 50u) /* 160 samples */

/* 8 kHz -> the core's rate (n_out samples): linear interpolation from *prev, kept across
 * frames. */
void mc_up_from_8k(const int16_t *in, int16_t *out, size_t n_out, int16_t *prev);

/* media_ann.c: one frame of announcement and ring tone into m->ann_pcm (decoding only when
 * render is true; a frame is used up either way). True when anything sounds in it. */
bool mc_ann_render(mc_t *m, bool render);
/* The meeting's gain for the next sample (Q24), ramping toward what `ducked` asks. */
int32_t mc_ann_duck_step(mc_t *m, bool ducked);
/* Frees the player's decoder. */
void mc_ann_deinit(mc_t *m);

#endif /* MEDIA_INTERNAL_H */
