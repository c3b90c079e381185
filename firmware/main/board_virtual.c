/*
 * board_virtual.c - the virtual audio board: a tone for a microphone and a level meter for a
 * speaker (board_virtual.h). Its log line is what an emulation test reads to know what the
 * device heard:
 *   "vboard: speaker rms -14.2 dBFS peak 575 Hz"
 * The peak comes from a 512-point FFT of the second's last 512 samples, so its resolution is
 * rate/512 (15.6 Hz at 8 kHz).
 */
#include "board_virtual.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#if CONFIG_FLEET_BOARD_VIRTUAL

#define FFT_N     512
#define AMPLITUDE 9830.0f /* -10 dBFS: room for a mixer to add others without clipping */
#define TWO_PI    6.28318530718f

static const char *TAG = "vboard";

static struct {
    int rate;
    int frame;
    float phase;
    float step; /* radians per sample */
    TickType_t due;
    /* the meter: one second of frames, the last FFT_N samples kept */
    double sum_sq;
    uint32_t samples;
    int16_t tail[FFT_N];
    uint32_t tail_at;
    float re[FFT_N], im[FFT_N];
} vb;

esp_err_t board_virtual_init(int rate, int frame, int tone_hz)
{
    memset(&vb, 0, sizeof vb);
    vb.rate = rate;
    vb.frame = frame;
    vb.step = TWO_PI * (float)tone_hz / (float)rate;
    vb.due = xTaskGetTickCount();
    ESP_LOGI(TAG, "virtual board: %d Hz tone at -10 dBFS, %d Hz, %d samples a frame", tone_hz,
             rate, frame);
    return ESP_OK;
}

bool board_virtual_read(int16_t *pcm)
{
    /* The frame clock a real board's I2S DMA gives: a frame every frame/rate seconds. */
    vTaskDelayUntil(&vb.due, pdMS_TO_TICKS(vb.frame * 1000 / vb.rate));
    for (int i = 0; i < vb.frame; i++) {
        pcm[i] = (int16_t)lrintf(AMPLITUDE * sinf(vb.phase));
        vb.phase += vb.step;
        if (vb.phase >= TWO_PI) {
            vb.phase -= TWO_PI;
        }
    }
    return true;
}

/* In-place radix-2 FFT of vb.re/vb.im (FFT_N points). */
static void fft(void)
{
    for (int i = 1, j = 0; i < FFT_N; i++) {
        int bit = FFT_N >> 1;
        for (; j & bit; bit >>= 1) {
            j ^= bit;
        }
        j ^= bit;
        if (i < j) {
            float t = vb.re[i];
            vb.re[i] = vb.re[j];
            vb.re[j] = t;
            t = vb.im[i];
            vb.im[i] = vb.im[j];
            vb.im[j] = t;
        }
    }
    for (int len = 2; len <= FFT_N; len <<= 1) {
        float a = -TWO_PI / (float)len;
        float wr = cosf(a), wi = sinf(a);
        for (int i = 0; i < FFT_N; i += len) {
            float cr = 1.0f, ci = 0.0f;
            for (int k = 0; k < len / 2; k++) {
                int u = i + k, v = i + k + len / 2;
                float tr = vb.re[v] * cr - vb.im[v] * ci;
                float ti = vb.re[v] * ci + vb.im[v] * cr;
                vb.re[v] = vb.re[u] - tr;
                vb.im[v] = vb.im[u] - ti;
                vb.re[u] += tr;
                vb.im[u] += ti;
                float n = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = n;
            }
        }
    }
}

static int peak_hz(void)
{
    for (int i = 0; i < FFT_N; i++) {
        uint32_t at = (vb.tail_at + (uint32_t)i) % FFT_N; /* oldest first */
        float hann = 0.5f - 0.5f * cosf(TWO_PI * (float)i / (float)(FFT_N - 1));
        vb.re[i] = (float)vb.tail[at] * hann;
        vb.im[i] = 0.0f;
    }
    fft();
    int best = 1;
    float best_p = 0.0f;
    for (int k = 1; k < FFT_N / 2; k++) {
        float p = vb.re[k] * vb.re[k] + vb.im[k] * vb.im[k];
        if (p > best_p) {
            best_p = p;
            best = k;
        }
    }
    return best * vb.rate / FFT_N;
}

void board_virtual_write(const int16_t *pcm)
{
    for (int i = 0; i < vb.frame; i++) {
        vb.sum_sq += (double)pcm[i] * (double)pcm[i];
        vb.tail[vb.tail_at] = pcm[i];
        vb.tail_at = (vb.tail_at + 1) % FFT_N;
    }
    vb.samples += (uint32_t)vb.frame;
    if (vb.samples < (uint32_t)vb.rate) {
        return;
    }
    double rms = sqrt(vb.sum_sq / (double)vb.samples) / 32768.0;
    if (rms < 1e-5) {
        ESP_LOGI(TAG, "speaker rms -100.0 dBFS peak 0 Hz");
    } else {
        ESP_LOGI(TAG, "speaker rms %.1f dBFS peak %d Hz", 20.0 * log10(rms), peak_hz());
    }
    vb.sum_sq = 0.0;
    vb.samples = 0;
}

#endif /* CONFIG_FLEET_BOARD_VIRTUAL */
