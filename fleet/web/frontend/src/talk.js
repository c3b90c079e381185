// One browser participant of docs/protocol.md §8: join a room, offer to every peer
// `joined` names (the members, or the mixer), answer later members' offers, and trickle
// ICE (§8.6): the offer goes out at once, candidates follow as their own messages.

const CAPS = { audio: true, mic: true, speaker: true, codecs: ["opus", "pcmu", "pcma"] };

export class Talk {
  constructor(console_, topic, note, { ptt = false, vanilla = false } = {}) {
    this.c = console_;
    this.topic = topic;
    this.note = note;
    this.ptt = ptt; // the mic is live only while the push-to-talk button is held
    this.vanilla = vanilla; // wait for every candidate and send one complete SDP
    this.peers = new Map(); // participant -> {pc, analyser, audio}
    this.session = null;
    this.participant = null;
    this.stream = null;
    this.audioContext = null;
    this.clickedAt = 0;
    this.firstAudioMs = null; // click on "talk" -> first audio from the room
    this.sentOffers = []; // {to, candidates}: how many candidates each SDP carried
  }

  get me() {
    return this.c.creds.username;
  }

  send(message) {
    this.c.client.publish(this.topic("meet", this.me, "up"), JSON.stringify(message), { qos: 1 });
  }

  async join(room) {
    this.clickedAt = performance.now();
    this.audioContext = new AudioContext();
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    this.setMic(!this.ptt);
    this.room = room;
    this.send({ type: "join", room, caps: CAPS });
    this.watchAudio();
  }

  async leave() {
    this.send({ type: "leave" });
    this.closeAll();
    this.stream?.getTracks().forEach((t) => t.stop());
    await this.audioContext?.close();
  }

  setMic(on) {
    this.micOn = on;
    this.stream?.getAudioTracks().forEach((t) => (t.enabled = on));
    document.body.dataset.mic = on ? "on" : "off";
  }

  closeAll() {
    for (const peer of this.peers.values()) peer.pc.close();
    this.peers.clear();
    this.render();
  }

  handle(msg) {
    switch (msg.type) {
      case "joined":
        this.session = msg.session;
        this.participant = msg.participant;
        this.note(`joined ${msg.room} as ${msg.participant} (${msg.media || "mesh"})`);
        for (const peer of msg.peers) this.offer(peer.participant);
        break;
      case "media":
        this.closeAll();
        for (const peer of msg.peers) this.offer(peer.participant);
        break;
      case "peer_left":
        this.peers.get(msg.participant)?.pc.close();
        this.peers.delete(msg.participant);
        this.render();
        break;
      case "offer":
        this.answer(msg.from, msg.sdp);
        break;
      case "answer":
        this.peers.get(msg.from)?.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "candidate": {
        const peer = this.peers.get(msg.from);
        if (peer) peer.pc.addIceCandidate(msg.candidate ? { candidate: msg.candidate, sdpMid: msg.mid } : null);
        break;
      }
      case "error":
        this.note(`meeting: ${msg.from ? msg.from + ": " : ""}${msg.code} ${msg.detail || ""}`, "error");
        break;
      case "left":
        this.closeAll();
        break;
    }
  }

  newPeer(id) {
    this.peers.get(id)?.pc.close();
    const pc = new RTCPeerConnection();
    for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
    const peer = { pc, analyser: null, audio: null, id };
    this.peers.set(id, peer);
    pc.addEventListener("icecandidate", (e) => {
      if (this.vanilla) return;
      // null: the end of our candidates
      this.send({ type: "candidate", to: id, candidate: e.candidate ? e.candidate.candidate : null, mid: e.candidate?.sdpMid || "0" });
    });
    pc.addEventListener("track", (e) => this.hear(peer, e.streams[0] || new MediaStream([e.track])));
    pc.addEventListener("connectionstatechange", () => this.render());
    this.render();
    return peer;
  }

  async localDescription(pc) {
    if (this.vanilla && pc.iceGatheringState !== "complete") {
      await new Promise((resolve) =>
        pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve()),
      );
    }
    return pc.localDescription.sdp;
  }

  async offer(id) {
    const { pc } = this.newPeer(id);
    await pc.setLocalDescription(await pc.createOffer());
    const sdp = await this.localDescription(pc);
    this.sentOffers.push({ to: id, candidates: (sdp.match(/^a=candidate:/gm) || []).length });
    this.send({ type: "offer", to: id, sdp });
  }

  async answer(id, sdp) {
    const { pc } = this.newPeer(id);
    await pc.setRemoteDescription({ type: "offer", sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    this.send({ type: "answer", to: id, sdp: await this.localDescription(pc) });
  }

  hear(peer, stream) {
    // An <audio> element plays it (Chromium needs one for WebRTC audio to flow); the
    // analyser measures what arrives.
    peer.audio = new Audio();
    peer.audio.srcObject = stream;
    peer.audio.play().catch(() => {});
    const source = this.audioContext.createMediaStreamSource(stream);
    peer.analyser = this.audioContext.createAnalyser();
    peer.analyser.fftSize = 4096;
    source.connect(peer.analyser);
  }

  // What each peer sounds like now: its RMS level and the frequency of its loudest bin.
  hearing() {
    const out = {};
    for (const [id, peer] of this.peers) {
      if (!peer.analyser) continue;
      const a = peer.analyser;
      const time = new Float32Array(a.fftSize);
      a.getFloatTimeDomainData(time);
      const rms = Math.sqrt(time.reduce((s, v) => s + v * v, 0) / time.length);
      const freq = new Float32Array(a.frequencyBinCount);
      a.getFloatFrequencyData(freq);
      let best = 0;
      for (let i = 1; i < freq.length; i++) if (freq[i] > freq[best]) best = i;
      out[id] = { rms, peakHz: (best * this.audioContext.sampleRate) / a.fftSize, state: peer.pc.connectionState };
    }
    return out;
  }

  // Per peer, which of `freqs` stand out in what arrives now: a bin within 15 dB of the
  // loudest one and above the noise floor (a mix holds several tones).
  heardTones(freqs) {
    const out = {};
    for (const [id, peer] of this.peers) {
      if (!peer.analyser) continue;
      const a = peer.analyser;
      const db = new Float32Array(a.frequencyBinCount);
      a.getFloatFrequencyData(db);
      const top = Math.max(...db);
      const binHz = this.audioContext.sampleRate / a.fftSize;
      out[id] = freqs.filter((hz) => {
        const i = Math.round(hz / binHz);
        const level = Math.max(db[i - 1], db[i], db[i + 1]);
        return level > top - 15 && level > -80;
      });
    }
    return out;
  }

  // Every frame until the first audio from the room: the click-to-audio figure.
  watchAudio() {
    const tick = () => {
      if (this.firstAudioMs !== null || !this.audioContext || this.audioContext.state === "closed") return;
      if (Object.values(this.hearing()).some((h) => h.rms > 0.01)) {
        this.firstAudioMs = performance.now() - this.clickedAt;
        this.note(`first audio from the room after ${this.firstAudioMs.toFixed(0)} ms`);
        return;
      }
      setTimeout(tick, 5);
    };
    tick();
  }

  render() {
    const box = document.querySelector("#peers");
    if (!box) return;
    box.replaceChildren();
    for (const [id, peer] of this.peers) {
      const div = document.createElement("div");
      div.dataset.peer = id;
      div.textContent = `${id}: ${peer.pc.connectionState}`;
      box.append(div);
    }
  }
}
