/*
 * test_media.c - the media core (components/media_core): wire formats, jitter buffer,
 * frame clock, and whole audio paths between two cores, with real Opus where
 * MC_TEST_OPUS is defined (the host builds; the rv32 build under QEMU has G.711 only).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "media_core.h"

#ifdef MC_TEST_OPUS
#include "host_opus.h"
#endif

#define PI 3.14159265358979323846

/* ---- helpers -------------------------------------------------------------------------------- */

static void tone(int16_t *pcm, size_t n, double hz, uint32_t rate, double amp, size_t *phase)
{
    for (size_t i = 0; i < n; i++) {
        pcm[i] = (int16_t)(amp * 32767.0 * sin(2.0 * PI * hz * (double)(*phase + i) / rate));
    }
    *phase += n;
}

/* Share of the signal's power at hz (Goertzel), 0..1. */
static double tone_share(const int16_t *pcm, size_t n, double hz, uint32_t rate)
{
    double w = 2.0 * PI * hz / rate, c = 2.0 * cos(w), s1 = 0, s2 = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        double s0 = pcm[i] + c * s1 - s2;
        s2 = s1;
        s1 = s0;
        total += (double)pcm[i] * pcm[i];
    }
    double power = s1 * s1 + s2 * s2 - c * s1 * s2;
    return total > 0 ? 2.0 * power / ((double)n * total) : 0.0;
}

/* Two cores, A and B, wired by their send callbacks: a packet A sends to peer id 1 arrives
 * at B's peer id 1 and the other way round; `drop_every` loses packets A->B. */
typedef struct {
    mc_t a, b;
    uint64_t now_ms;
    unsigned drop_every;
    unsigned sent_ab;
    size_t last_len;
} link_t;

static link_t L;

static void send_a(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    link_t *l = ctx;
    l->sent_ab++;
    l->last_len = len;
    if (l->drop_every != 0 && l->sent_ab % l->drop_every == 0) {
        return;
    }
    (void)mc_peer_rtp(&l->b, peer, rtp, len, l->now_ms);
}

static void send_b(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    link_t *l = ctx;
    (void)mc_peer_rtp(&l->a, peer, rtp, len, l->now_ms);
}

static const mc_opus_ops_t *opus_ops(void)
{
#ifdef MC_TEST_OPUS
    return host_opus_ops();
#else
    return NULL;
#endif
}

static void link_init(uint32_t rate, mc_codec_t codec, uint8_t pt)
{
    mc_deinit(&L.a);
    mc_deinit(&L.b);
    memset(&L, 0, sizeof L);
    mc_config_t ca = {.rate = rate, .opus = opus_ops(), .send = send_a, .send_ctx = &L};
    mc_config_t cb = {.rate = rate, .opus = opus_ops(), .send = send_b, .send_ctx = &L,
                      .ssrc_seed = 77};
    CHECK(mc_init(&L.a, &ca));
    CHECK(mc_init(&L.b, &cb));
    CHECK(mc_peer_add(&L.a, 1, codec, pt, true, true));
    CHECK(mc_peer_add(&L.b, 1, codec, pt, true, true));
}

/* Runs `frames` frames: A's mic plays hz (0 = silence); B's speaker output is kept. */
static void link_run(unsigned frames, double hz, int16_t *b_out, size_t *phase)
{
    int16_t mic[MC_MAX_FRAME], spk[MC_MAX_FRAME];
    size_t n = mc_frame_samples(&L.a);
    for (unsigned f = 0; f < frames; f++) {
        if (hz > 0) {
            tone(mic, n, hz, L.a.cfg.rate, 0.5, phase);
        } else {
            memset(mic, 0, sizeof mic);
        }
        mc_frame(&L.a, mic, spk);
        mc_frame(&L.b, NULL, b_out != NULL ? b_out + (size_t)f * n : spk);
        L.now_ms += MC_FRAME_MS;
    }
}

/* ---- RTP ------------------------------------------------------------------------------------ */

static void test_rtp_roundtrip_and_refusals(void)
{
    uint8_t pay[5] = {1, 2, 3, 4, 5}, pkt[64];
    mc_rtp_t h = {.pt = 111, .marker = true, .seq = 65535, .ts = 0xdeadbeef, .ssrc = 0x01020304,
                  .payload = pay, .payload_len = sizeof pay};
    size_t n = mc_rtp_write(&h, pkt, sizeof pkt);
    CHECK_INT(n, 17);
    CHECK_INT(mc_rtp_write(&h, pkt, 16), 0);
    mc_rtp_t got;
    CHECK(mc_rtp_parse(pkt, n, &got));
    CHECK_INT(got.pt, 111);
    CHECK(got.marker);
    CHECK_INT(got.seq, 65535);
    CHECK_INT(got.ts, 0xdeadbeef);
    CHECK_INT(got.ssrc, 0x01020304);
    CHECK_INT(got.payload_len, 5);
    CHECK(memcmp(got.payload, pay, 5) == 0);

    /* Two CSRCs, a one-word extension and 3 bytes of padding around a 2-byte payload. */
    uint8_t x[] = {0xb2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, /* V=2 P X CC=2, PT 0 */
                   9, 9, 9, 9, 8, 8, 8, 8,                     /* CSRCs */
                   0xbe, 0xde, 0, 1, 7, 7, 7, 7,               /* extension, 1 word */
                   0xaa, 0xbb, 0, 0, 3};                       /* payload, padding */
    CHECK(mc_rtp_parse(x, sizeof x, &got));
    CHECK_INT(got.payload_len, 2);
    CHECK_INT(got.payload[0], 0xaa);

    CHECK(!mc_rtp_parse(pkt, 11, &got));       /* short */
    CHECK(!mc_rtp_parse(pkt, 12, &got));       /* no payload */
    pkt[0] = 0x40;                              /* version 1 */
    CHECK(!mc_rtp_parse(pkt, n, &got));
    uint8_t rtcp[] = {0x80, 200, 0, 6, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    CHECK(!mc_rtp_parse(rtcp, sizeof rtcp, &got)); /* a sender report */
    x[sizeof x - 1] = 40;                          /* padding longer than the packet */
    CHECK(!mc_rtp_parse(x, sizeof x, &got));
    x[sizeof x - 1] = 0;
    CHECK(!mc_rtp_parse(x, sizeof x, &got));
    x[0] = 0x9f; /* 15 CSRCs: past the end */
    CHECK(!mc_rtp_parse(x, sizeof x, &got));
}

/* ---- G.711 ------------------------------------------------------------------------------------ */

static void test_g711(void)
{
    CHECK_INT(mc_ulaw_encode(0), 0xff);
    CHECK_INT(mc_ulaw_decode(0xff), 0);
    CHECK_INT(mc_ulaw_decode(0x80), 32124);
    CHECK_INT(mc_ulaw_decode(0x00), -32124);
    CHECK_INT(mc_alaw_encode(0), 0xd5);
    CHECK_INT(mc_alaw_decode(0xd5), 8);
    CHECK_INT(mc_alaw_decode(0xaa), 32256);
    CHECK_INT(mc_alaw_decode(0x2a), -32256);
    /* Round trips stay within the quantiser's step (about 1/16 of the value, plus a bit). */
    long worst_u = 0, worst_a = 0;
    for (long s = -32768; s <= 32767; s += 7) {
        long du = labs(mc_ulaw_decode(mc_ulaw_encode((int16_t)s)) - s);
        long da = labs(mc_alaw_decode(mc_alaw_encode((int16_t)s)) - s);
        long allowed = labs(s) / 16 + 140;
        if (du > allowed && du > worst_u) {
            worst_u = du;
        }
        if (da > allowed && da > worst_a) {
            worst_a = da;
        }
    }
    CHECK_INT(worst_u, 0);
    CHECK_INT(worst_a, 0);
    for (int c = 0; c < 256; c++) { /* decode . encode . decode is the identity */
        int16_t u = mc_ulaw_decode((uint8_t)c), a = mc_alaw_decode((uint8_t)c);
        CHECK(mc_ulaw_decode(mc_ulaw_encode(u)) == u);
        CHECK(mc_alaw_decode(mc_alaw_encode(a)) == a);
    }
}

/* ---- SDP ------------------------------------------------------------------------------------- */

static const char OFFER[] =
    "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=sendrecv\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

static void test_sdp_audio(void)
{
    mc_codec_t c = MC_CODEC_NONE;
    uint8_t pt = 255;
    unsigned all = MC_ALLOW(MC_CODEC_OPUS) | MC_ALLOW(MC_CODEC_PCMU) | MC_ALLOW(MC_CODEC_PCMA);
    CHECK(mc_sdp_audio(OFFER, strlen(OFFER), all, &c, &pt));
    CHECK(c == MC_CODEC_OPUS && pt == 96);
    CHECK(mc_sdp_audio(OFFER, strlen(OFFER), MC_ALLOW(MC_CODEC_PCMA), &c, &pt));
    CHECK(c == MC_CODEC_PCMA && pt == 8);
    /* Static payload types need no rtpmap; LF-only line ends and upper case are fine. */
    const char *bare = "v=0\nm=audio 5004 RTP/AVP 0\n";
    CHECK(mc_sdp_audio(bare, strlen(bare), MC_ALLOW(MC_CODEC_PCMU), &c, &pt));
    CHECK(c == MC_CODEC_PCMU && pt == 0);
    const char *upper = "m=audio 1 RTP/AVP 109\r\na=rtpmap:109 OPUS/48000/2\r\n";
    CHECK(mc_sdp_audio(upper, strlen(upper), all, &c, &pt) && c == MC_CODEC_OPUS && pt == 109);
    /* An rtpmap in another section does not count. */
    const char *other = "m=audio 1 RTP/AVP 97\r\nm=video 1 RTP/AVP 96\r\na=rtpmap:97 opus/48000/2\r\n";
    CHECK(!mc_sdp_audio(other, strlen(other), all, &c, &pt));
    const char *refused = "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\n";
    CHECK(!mc_sdp_audio(refused, strlen(refused), all, &c, &pt));
    CHECK(!mc_sdp_audio(OFFER, strlen(OFFER), 0, &c, &pt));
    CHECK(!mc_sdp_audio("v=0\r\n", 5, all, &c, &pt));
    CHECK(!mc_sdp_audio("m=audio 9 RTP/AVP x\r\n", 21, all, &c, &pt));
    /* Only len bytes are read: the m-line cut short names nothing usable. */
    CHECK(!mc_sdp_audio(OFFER, 80, all, &c, &pt));
}

/* ---- jitter buffer ---------------------------------------------------------------------------- */

static mc_pop_t pop(mc_jitter_t *jb, uint8_t *first)
{
    const uint8_t *d = NULL;
    size_t n = 0;
    mc_pop_t r = mc_jitter_pop(jb, &d, &n);
    *first = r == MC_POP_FRAME && n > 0 ? d[0] : 0;
    return r;
}

static void test_jitter_order_loss_late_dup(void)
{
    mc_jitter_t jb;
    mc_jitter_reset(&jb);
    uint8_t v, p;
    /* Prefill: nothing plays until MC_PREFILL_FRAMES are in. */
    v = 10;
    CHECK(mc_jitter_push(&jb, 65534, &v, 1));
    CHECK(pop(&jb, &p) == MC_POP_WAIT);
    v = 12;
    CHECK(mc_jitter_push(&jb, 0, &v, 1)); /* wraps; 65535 is missing for now */
    v = 11;
    CHECK(mc_jitter_push(&jb, 65535, &v, 1)); /* reordered, still in time */
    CHECK(!mc_jitter_push(&jb, 65535, &v, 1)); /* duplicate */
    CHECK_INT(jb.duplicates, 1);
    CHECK(pop(&jb, &p) == MC_POP_FRAME && p == 10);
    CHECK(pop(&jb, &p) == MC_POP_FRAME && p == 11);
    CHECK(pop(&jb, &p) == MC_POP_FRAME && p == 12);
    v = 14;
    CHECK(mc_jitter_push(&jb, 2, &v, 1)); /* 1 is lost */
    CHECK(pop(&jb, &p) == MC_POP_LOST);
    CHECK(pop(&jb, &p) == MC_POP_FRAME && p == 14);
    v = 13;
    CHECK(!mc_jitter_push(&jb, 1, &v, 1)); /* too late now */
    CHECK_INT(jb.late, 1);
    /* Too big or empty payloads are refused. */
    uint8_t big[MC_MAX_PAYLOAD + 1] = {0};
    CHECK(!mc_jitter_push(&jb, 3, big, sizeof big));
    CHECK(!mc_jitter_push(&jb, 3, big, 0));
}

static void test_jitter_idle_jump_and_drift(void)
{
    mc_jitter_t jb;
    mc_jitter_reset(&jb);
    uint8_t v = 1, p;
    for (uint16_t s = 100; s < 103; s++) {
        CHECK(mc_jitter_push(&jb, s, &v, 1));
    }
    for (int i = 0; i < 3; i++) {
        CHECK(pop(&jb, &p) == MC_POP_FRAME);
    }
    /* The peer goes quiet: frames are concealed, then playout stops (no endless "loss"). */
    int lost = 0;
    while (pop(&jb, &p) == MC_POP_LOST) {
        lost++;
    }
    CHECK_INT(lost, MC_IDLE_FRAMES - 1);
    CHECK(!jb.playing);
    /* It resumes far away (a restarted sender): the buffer re-anchors, nothing counts late. */
    for (uint16_t s = 40000; s < 40003; s++) {
        CHECK(mc_jitter_push(&jb, s, &v, 1));
    }
    CHECK(pop(&jb, &p) == MC_POP_FRAME);
    CHECK_INT(jb.late, 0);
    /* While playing, a jump beyond the window restarts it. */
    CHECK(mc_jitter_push(&jb, 50000, &v, 1));
    CHECK_INT(jb.resets, 1);
    CHECK(pop(&jb, &p) == MC_POP_WAIT); /* prefilling again */
    /* A sender that runs fast: the buffer never holds more than 3/4 of its slots. */
    mc_jitter_reset(&jb);
    uint16_t s = 0;
    for (int i = 0; i < 200; i++) {
        CHECK(mc_jitter_push(&jb, s++, &v, 1));
        if (i % 5 != 0) { /* five packets arrive for every four pops */
            (void)pop(&jb, &p);
        }
        CHECK(jb.buffered <= MC_JITTER_SLOTS * 3 / 4 + 1);
    }
    CHECK(jb.dropped > 0);
}

/* ---- frame clock ------------------------------------------------------------------------------ */

static void test_clock(void)
{
    mc_clock_t c;
    mc_clock_start(&c, 1000000);
    CHECK_INT(mc_clock_due(&c, 1000000), 0);
    CHECK_INT(mc_clock_wait_us(&c, 1005000), 15000);
    CHECK_INT(mc_clock_due(&c, 1020000), 1);
    CHECK_INT(mc_clock_due(&c, 1020000), 0);
    /* Woken late: the frames due are counted, and the deadline does not drift. */
    CHECK_INT(mc_clock_due(&c, 1061000), 2);
    CHECK_INT(c.next_us, 1080000);
    uint64_t t = 1080000;
    unsigned total = 0;
    for (int i = 0; i < 1000; i++) { /* 1000 wakes, each 20.3 ms apart, then catch up */
        t += 20300;
        total += mc_clock_due(&c, t);
    }
    total += mc_clock_due(&c, c.next_us + 20000 * 4);
    CHECK_INT(total, (t - 1080000) / 20000 + 1 + 5);
    CHECK_INT(c.resyncs, 0);
    /* Stalled for a second: resync, one frame, deadline from now. */
    CHECK_INT(mc_clock_due(&c, c.next_us + 1000000), 1);
    CHECK_INT(c.resyncs, 1);
    CHECK_INT(mc_clock_wait_us(&c, c.next_us - 20000), 20000);
}

/* ---- whole paths ------------------------------------------------------------------------------ */

/* The tone holds >= 80% of the power in every 40 ms window (short windows: Opus keeps
 * the pitch but not the phase over long stretches). */
static double mean_share(const int16_t *pcm, size_t n, double hz, uint32_t rate, double *worst)
{
    size_t w = rate / 25, k = 0;
    double sum = 0.0;
    *worst = 1.0;
    for (size_t off = 0; off + w <= n; off += w, k++) {
        double share = tone_share(pcm + off, w, hz, rate);
        *worst = share < *worst ? share : *worst;
        sum += share;
    }
    return k > 0 ? sum / (double)k : 0.0;
}

static void check_hears(const int16_t *pcm, size_t n, double hz, uint32_t rate)
{
    double worst;
    (void)mean_share(pcm, n, hz, rate, &worst);
    if (worst < 0.8) {
        fprintf(stderr, "  %g Hz: worst 40 ms share %.3f\n", hz, worst);
    }
    CHECK(worst >= 0.8);
}

static void test_g711_path_tone_gate_and_stats(void)
{
    static int16_t out[50 * MC_MAX_FRAME];
    size_t phase = 0;
    const uint32_t rate = 16000;
    link_init(rate, MC_CODEC_PCMU, 0);
    link_run(50, 1000.0, out, &phase); /* one second */
    size_t n = mc_frame_samples(&L.b);
    CHECK_INT(n, 320);
    CHECK_INT(L.last_len, MC_RTP_HEADER + 160); /* 20 ms of PCMU */
    check_hears(out + 10 * n, 40 * n, 1000.0, rate);
    const mc_peer_stats_t *st = mc_peer_stats(&L.b, 1);
    CHECK(st != NULL);
    CHECK_INT(st->packets_received, 50);
    CHECK_INT(st->packets_lost, 0);
    CHECK(st->level > 0.2 && st->level < 0.5); /* a 0.5 sine: RMS 0.35 */
    CHECK(st->jitter_ms < 0.01);               /* arrivals exactly on the RTP clock */
    CHECK_INT(mc_peer_stats(&L.a, 1)->packets_sent, 50);

    /* The gate: packets keep coming at the same pace, but they carry silence. */
    mc_set_mic(&L.a, false);
    link_run(50, 1000.0, out, &phase);
    CHECK_INT(st->packets_received, 100);
    CHECK_INT(st->packets_lost, 0); /* no gap: the RTP clock ran on */
    CHECK(mc_rms(out + 10 * n, 40 * n) < 0.001);
    CHECK(L.a.mic_level == 0.0);
    mc_set_mic(&L.a, true);
    link_run(25, 1000.0, out, &phase);
    check_hears(out + 5 * n, 20 * n, 1000.0, rate); /* back at once */
}

static void test_mix_volume_and_clipping(void)
{
    /* B hears two peers: A over PCMA (id 1) and a third core C over PCMU (id 2). */
    static int16_t out[40 * MC_MAX_FRAME];
    const uint32_t rate = 8000;
    link_init(rate, MC_CODEC_PCMA, 8);
    mc_t c;
    mc_config_t cc = {.rate = rate, .send = NULL};
    CHECK(mc_init(&c, &cc));
    CHECK(mc_peer_add(&L.b, 2, MC_CODEC_PCMU, 0, false, true));
    int16_t mic_a[160], mic_c[160];
    size_t pa = 0, pc = 0;
    uint16_t seq = 7;
    for (int f = 0; f < 40; f++) {
        tone(mic_a, 160, 500.0, rate, 0.3, &pa);
        tone(mic_c, 160, 1300.0, rate, 0.3, &pc);
        uint8_t pay[160];
        for (int i = 0; i < 160; i++) {
            pay[i] = mc_ulaw_encode(mic_c[i]);
        }
        CHECK(mc_peer_payload(&L.b, 2, seq++, (uint32_t)f * 160u, pay, 160, L.now_ms));
        mc_frame(&L.a, mic_a, NULL);
        mc_frame(&L.b, NULL, out + f * 160);
        L.now_ms += 20;
    }
    CHECK(tone_share(out + 1600, 4800, 500.0, rate) > 0.35);
    CHECK(tone_share(out + 1600, 4800, 1300.0, rate) > 0.35);
    double full = mc_rms(out + 1600, 4800);
    CHECK(full > 0.25 && full < 0.35); /* two 0.3 sines: RMS 0.30 */
    CHECK_INT(L.b.clipped, 0);

    /* Volume 50 is a quarter of the amplitude; 0 is silence. */
    mc_set_volume(&L.b, 50);
    CHECK_INT(L.b.volume, 50);
    for (int f = 0; f < 10; f++) {
        uint8_t pay[160];
        tone(mic_c, 160, 1300.0, rate, 0.3, &pc);
        for (int i = 0; i < 160; i++) {
            pay[i] = mc_ulaw_encode(mic_c[i]);
        }
        (void)mc_peer_payload(&L.b, 2, seq++, 0, pay, 160, L.now_ms);
        tone(mic_a, 160, 500.0, rate, 0.3, &pa);
        mc_frame(&L.a, mic_a, NULL);
        mc_frame(&L.b, NULL, out + f * 160);
    }
    double quarter = mc_rms(out + 800, 800);
    CHECK(quarter > full / 4 * 0.85 && quarter < full / 4 * 1.15);
    mc_set_volume(&L.b, -5);
    CHECK_INT(L.b.volume, 0);
    mc_set_volume(&L.b, 250);
    CHECK_INT(L.b.volume, 100);

    /* Two full-scale peers: the sum saturates instead of wrapping around. */
    int16_t loud[160];
    for (int i = 0; i < 160; i++) {
        loud[i] = (int16_t)(i % 2 == 0 ? 32000 : -32000);
    }
    for (int f = 0; f < 10; f++) {
        uint8_t pay[160];
        for (int i = 0; i < 160; i++) {
            pay[i] = mc_ulaw_encode(loud[i]);
        }
        (void)mc_peer_payload(&L.b, 2, seq++, 0, pay, 160, L.now_ms);
        mc_frame(&L.a, loud, NULL);
        mc_frame(&L.b, NULL, out + f * 160);
    }
    CHECK(L.b.clipped > 100);
    bool wrapped = false;
    for (int i = 800; i < 1600; i++) {
        wrapped |= (i % 2 == 0) ? out[i] < 0 : out[i] > 0;
    }
    CHECK(!wrapped);
    CHECK(out[1000] == INT16_MAX && out[1001] == INT16_MIN);
    mc_deinit(&c);
}

static void test_concealment_g711(void)
{
    static int16_t out[100 * MC_MAX_FRAME];
    size_t phase = 0;
    link_init(8000, MC_CODEC_PCMU, 0);
    L.drop_every = 5;
    link_run(100, 600.0, out, &phase);
    const mc_peer_stats_t *st = mc_peer_stats(&L.b, 1);
    CHECK_INT(st->packets_received, 80);
    CHECK(st->packets_lost >= 19 && st->packets_lost <= 20);
    /* The lost frames are filled from the last good one, not with silence. */
    size_t silent = 0;
    for (int f = 10; f < 100; f++) {
        silent += mc_rms(out + f * 160, 160) < 0.05 ? 1u : 0u;
    }
    CHECK_INT(silent, 0);
}

static void test_bad_input_is_refused_and_counted(void)
{
    mc_t m;
    mc_config_t bad = {.rate = 44100};
    CHECK(!mc_init(&m, &bad));
    mc_config_t cfg = {.rate = 48000, .opus = NULL};
    CHECK(mc_init(&m, &cfg));
    CHECK(!mc_peer_add(&m, 1, MC_CODEC_OPUS, 111, true, true)); /* no Opus in this build */
    CHECK(!mc_peer_add(&m, 1, MC_CODEC_NONE, 0, true, true));
    CHECK(!mc_peer_add(&m, 1, MC_CODEC_PCMU, 200, true, true));
    for (uint32_t id = 1; id <= MC_MAX_PEERS; id++) {
        CHECK(mc_peer_add(&m, id, MC_CODEC_PCMU, 0, true, true));
    }
    CHECK(!mc_peer_add(&m, 99, MC_CODEC_PCMU, 0, true, true)); /* full */
    CHECK(!mc_peer_add(&m, 1, MC_CODEC_PCMU, 0, true, true));  /* id in use */
    CHECK_INT(mc_peer_count(&m), MC_MAX_PEERS);
    uint8_t pkt[MC_RTP_HEADER + 160] = {0x80, 8}; /* PCMA: not what was negotiated */
    CHECK(!mc_peer_rtp(&m, 1, pkt, sizeof pkt, 0));
    pkt[1] = 0;
    CHECK(!mc_peer_rtp(&m, 1, pkt, 100, 0)); /* G.711 but not 20 ms */
    CHECK(!mc_peer_rtp(&m, 1, pkt, 5, 0));   /* not RTP */
    CHECK(mc_peer_rtp(&m, 1, pkt, sizeof pkt, 0));
    CHECK(!mc_peer_rtp(&m, 42, pkt, sizeof pkt, 0)); /* unknown peer */
    CHECK_INT(mc_peer_stats(&m, 1)->bad_packets, 3);
    CHECK_INT(mc_peer_stats(&m, 1)->packets_received, 1);
    CHECK(mc_peer_stats(&m, 42) == NULL);
    mc_peer_remove(&m, 1);
    mc_peer_remove(&m, 1);
    CHECK_INT(mc_peer_count(&m), MC_MAX_PEERS - 1);
    /* A send-only peer takes no audio in. */
    CHECK(mc_peer_add(&m, 5, MC_CODEC_PCMU, 0, true, false));
    pkt[1] = 0;
    CHECK(!mc_peer_rtp(&m, 5, pkt, sizeof pkt, 0));
    mc_frame(&m, NULL, NULL);
    mc_deinit(&m);
}

#ifdef MC_TEST_OPUS
static void test_opus_path_and_plc(void)
{
    static int16_t out[100 * MC_MAX_FRAME];
    size_t phase = 0;
    link_init(48000, MC_CODEC_OPUS, 111);
    link_run(50, 880.0, out, &phase);
    size_t n = mc_frame_samples(&L.b);
    check_hears(out + 10 * n, 40 * n, 880.0, 48000);
    CHECK(L.last_len > MC_RTP_HEADER && L.last_len < MC_RTP_HEADER + 200); /* ~32 kbit/s */
    /* Losses: Opus conceals (no silent frame), and the tone survives. */
    L.drop_every = 4;
    link_run(100, 880.0, out, &phase);
    const mc_peer_stats_t *st = mc_peer_stats(&L.b, 1);
    CHECK(st->packets_lost >= 24 && st->packets_lost <= 26);
    size_t silent = 0;
    for (int f = 10; f < 100; f++) {
        silent += mc_rms(out + (size_t)f * n, n) < 0.02 ? 1u : 0u;
    }
    CHECK_INT(silent, 0);
    double worst, mean = mean_share(out + 10 * n, 90 * n, 880.0, 48000, &worst);
    if (mean < 0.7) {
        fprintf(stderr, "  880 Hz under loss: mean share %.3f (worst %.3f)\n", mean, worst);
    }
    CHECK(mean >= 0.7); /* concealed frames are close, not exact */
    /* Jittered arrival shows in the stats. */
    double before = st->jitter_ms;
    for (int f = 0; f < 50; f++) {
        L.now_ms += (f % 2) ? 12 : 0; /* +-6 ms around the 20 ms pace */
        link_run(1, 880.0, NULL, &phase);
        L.now_ms -= (f % 2) ? 12 : 0;
    }
    CHECK(st->jitter_ms > before + 2.0);
    mc_deinit(&L.a);
    mc_deinit(&L.b);
}

static unsigned sent_to[3];
static size_t len_to[3];

static void count_send(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    (void)ctx;
    mc_rtp_t h;
    if (peer < 3 && mc_rtp_parse(rtp, len, &h)) {
        sent_to[peer]++;
        len_to[peer] = h.payload_len;
    }
}

static void test_opus_and_pcmu_peers_at_once(void)
{
    /* One mic, two peers with different codecs: each gets its own stream every frame. */
    mc_t m;
    memset(sent_to, 0, sizeof sent_to);
    mc_config_t cfg = {.rate = 48000, .opus = host_opus_ops(), .send = count_send};
    CHECK(mc_init(&m, &cfg));
    CHECK(mc_peer_add(&m, 1, MC_CODEC_OPUS, 111, true, true));
    CHECK(mc_peer_add(&m, 2, MC_CODEC_PCMU, 0, true, false));
    int16_t mic[960];
    size_t ph = 0;
    for (int f = 0; f < 5; f++) {
        tone(mic, 960, 440.0, 48000, 0.5, &ph);
        mc_frame(&m, mic, NULL);
    }
    CHECK_INT(sent_to[1], 5);
    CHECK_INT(sent_to[2], 5);
    CHECK_INT(len_to[2], 160);
    CHECK(len_to[1] > 0 && len_to[1] < 200);
    CHECK_INT(mc_peer_stats(&m, 1)->packets_sent, 5);
    mc_deinit(&m);
}
#endif

/* ---- announcements, ring, ducking ------------------------------------------------------------ */

/* Amplitude (0..1 of full scale) of the hz component of n samples. */
static double tone_amp(const int16_t *pcm, size_t n, double hz, uint32_t rate)
{
    double re = 0, im = 0;
    for (size_t i = 0; i < n; i++) {
        double w = 2.0 * PI * hz * (double)i / rate;
        re += pcm[i] * cos(w);
        im += pcm[i] * sin(w);
    }
    return 2.0 * sqrt(re * re + im * im) / (double)n / 32767.0;
}

/* One 20 ms PCMU frame of a 1300 Hz tone at 0.3. */
static void pcmu_tone_frame(uint8_t *out, size_t *phase)
{
    int16_t pcm[160];
    tone(pcm, 160, 1300.0, 8000, 0.3, phase);
    for (int i = 0; i < 160; i++) {
        out[i] = mc_ulaw_encode(pcm[i]);
    }
}

static void test_ann_plays_over_a_ducked_meeting(void)
{
    /* B hears A's 500 Hz at 0.5 over PCMU (8 kHz: 160 samples a frame) and gets an
     * announcement of 1300 Hz at 0.3 that arrives as it plays (the controller's pacing),
     * long enough for the byte ring to wrap. */
    static int16_t out[400 * 160];
    link_init(8000, MC_CODEC_PCMU, 0);
    size_t pa = 0, pann = 0;
    uint8_t frame[160];
    link_run(20, 500.0, out, &pa);
    double before = tone_amp(out + 10 * 160, 1600, 500.0, 8000);
    CHECK(before > 0.45 && before < 0.55);
    CHECK(mc_duck_gain(&L.b) == 1.0);

    unsigned pushed = 0, total = 250;
    for (unsigned f = 0; f < 400; f++) {
        while (pushed < total && L.b.ann.count < 50) { /* about 1 s ahead */
            pcmu_tone_frame(frame, &pann);
            CHECK(mc_ann_push(&L.b, MC_CODEC_PCMU, frame, sizeof frame));
            pushed++;
        }
        link_run(1, 500.0, out + (size_t)f * 160, &pa);
    }
    uint32_t queued, played;
    mc_ann_progress(&L.b, &queued, &played);
    CHECK_INT(queued, 0);
    CHECK_INT(played, total);
    /* While it plays (after the 50 ms ramp): the meeting at a quarter, the announcement whole,
     * in every 100 ms window, through the ring's wrap-arounds. */
    for (unsigned w = 1; w < total / 5 - 1; w++) {
        const int16_t *win = out + (size_t)w * 5 * 160;
        double meeting = tone_amp(win, 800, 500.0, 8000);
        double ann = tone_amp(win, 800, 1300.0, 8000);
        if (!(meeting > before * 0.2 && meeting < before * 0.3 && ann > 0.25 && ann < 0.35)) {
            fprintf(stderr, "  window %u: meeting %.3f ann %.3f\n", w, meeting, ann);
            CHECK(!"not ducked, or the announcement is not whole");
            break;
        }
    }
    /* After the last frame the meeting comes back within 200 ms, and the announcement stops. */
    const int16_t *after = out + (size_t)(total + 12) * 160;
    CHECK(tone_amp(after, 1600, 500.0, 8000) > before * 0.9);
    CHECK(tone_amp(after, 1600, 1300.0, 8000) < 0.01);
    CHECK(mc_duck_gain(&L.b) == 1.0);
    /* The ramp back up is gradual: 100 ms after the end the gain is about half way. */
    const int16_t *mid = out + (size_t)(total + 4) * 160;
    double ramp = tone_amp(mid, 160, 500.0, 8000);
    CHECK(ramp > before * 0.4 && ramp < before * 0.85);
}

static void test_ann_queue_bounds_and_flush(void)
{
    mc_t m;
    mc_config_t cfg = {.rate = 16000};
    CHECK(mc_init(&m, &cfg));
    uint8_t frame[160];
    size_t phase = 0;
    pcmu_tone_frame(frame, &phase);
    CHECK(!mc_ann_push(&m, MC_CODEC_PCMU, frame, 159)); /* PCMU frames are 160 bytes */
    CHECK(!mc_ann_push(&m, MC_CODEC_PCMA, frame, 160));
    CHECK(!mc_ann_push(&m, MC_CODEC_OPUS, frame, 10)); /* no Opus ops in this core */
    CHECK(!mc_ann_push(&m, MC_CODEC_PCMU, NULL, 160));
    unsigned n = 0;
    while (mc_ann_push(&m, MC_CODEC_PCMU, frame, sizeof frame)) {
        n++;
    }
    CHECK_INT(n, MC_ANN_FRAMES);
    uint32_t queued, played;
    int16_t spk[MC_MAX_FRAME];
    mc_frame(&m, NULL, spk);
    mc_frame(&m, NULL, NULL); /* no speaker: the frame is used up all the same */
    mc_ann_progress(&m, &queued, &played);
    CHECK_INT(queued, MC_ANN_FRAMES - 2);
    CHECK_INT(played, 2);
    CHECK(mc_ann_push(&m, MC_CODEC_PCMU, frame, sizeof frame));
    mc_ann_flush(&m);
    mc_ann_progress(&m, &queued, &played);
    CHECK_INT(queued, 0);
    CHECK_INT(played, 0);
    mc_frame(&m, NULL, spk);
    CHECK(mc_rms(spk, 320) == 0.0);
    mc_deinit(&m);
}

static void test_ring_tone_pattern(void)
{
    static int16_t out[350 * 160];
    mc_t m;
    mc_config_t cfg = {.rate = 8000};
    CHECK(mc_init(&m, &cfg));
    mc_ring(&m, true);
    for (int f = 0; f < 350; f++) { /* 7 s: on 0-2 s, off 2-6 s, on again from 6 s */
        mc_frame(&m, NULL, out + (size_t)f * 160);
    }
    const int16_t *on = out + 8000; /* 1-1.5 s */
    CHECK(tone_amp(on, 4000, 440.0, 8000) > 0.12);
    CHECK(tone_amp(on, 4000, 480.0, 8000) > 0.12);
    CHECK(mc_duck_gain(&m) < 1.0);               /* the ring ducks a meeting too */
    CHECK(mc_rms(out + 3 * 8000, 8000) < 0.001); /* 3-4 s: the pause */
    CHECK(tone_amp(out + 6 * 8000 + 800, 4000, 440.0, 8000) > 0.12);
    mc_ring(&m, false);
    mc_frame(&m, NULL, out);
    CHECK(mc_rms(out, 160) == 0.0);
    mc_deinit(&m);
}

#ifdef MC_TEST_OPUS
static void test_ann_opus_decoded(void)
{
    /* Opus frames of a 1000 Hz tone, encoded at 48 kHz as the controller does, played by a
     * 16 kHz core (the decoder resamples). */
    const mc_opus_ops_t *ops = host_opus_ops();
    void *enc = ops->enc_new(ops->ctx, 48000, 32000);
    CHECK(enc != NULL);
    mc_t m;
    mc_config_t cfg = {.rate = 16000, .opus = ops};
    CHECK(mc_init(&m, &cfg));
    static int16_t out[50 * 320];
    size_t phase = 0;
    for (int f = 0; f < 50; f++) {
        int16_t pcm[960];
        uint8_t pkt[MC_MAX_PAYLOAD];
        tone(pcm, 960, 1000.0, 48000, 0.3, &phase);
        int n = ops->encode(enc, pcm, 960, pkt, sizeof pkt);
        CHECK(n > 0);
        CHECK(mc_ann_push(&m, MC_CODEC_OPUS, pkt, (size_t)n));
    }
    for (int f = 0; f < 50; f++) {
        mc_frame(&m, NULL, out + (size_t)f * 320);
    }
    CHECK(tone_share(out + 320 * 10, 320 * 30, 1000.0, 16000) > 0.8);
    double amp = tone_amp(out + 320 * 10, 320 * 30, 1000.0, 16000);
    CHECK(amp > 0.2 && amp < 0.4);
    ops->enc_free(enc);
    mc_deinit(&m);
}
#endif

void suite_media(void)
{
    RUN(test_rtp_roundtrip_and_refusals);
    RUN(test_g711);
    RUN(test_sdp_audio);
    RUN(test_jitter_order_loss_late_dup);
    RUN(test_jitter_idle_jump_and_drift);
    RUN(test_clock);
    RUN(test_g711_path_tone_gate_and_stats);
    RUN(test_mix_volume_and_clipping);
    RUN(test_concealment_g711);
    RUN(test_bad_input_is_refused_and_counted);
    RUN(test_ann_plays_over_a_ducked_meeting);
    RUN(test_ann_queue_bounds_and_flush);
    RUN(test_ring_tone_pattern);
#ifdef MC_TEST_OPUS
    RUN(test_ann_opus_decoded);
    RUN(test_opus_path_and_plc);
    RUN(test_opus_and_pcmu_peers_at_once);
#endif
    mc_deinit(&L.a);
    mc_deinit(&L.b);
}
