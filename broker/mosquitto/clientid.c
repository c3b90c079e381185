/* Mosquitto 2.0 plugin: who may connect, with which client id, and what it may cost
 * (docs/protocol.md 11).
 *
 * Client ids. Mosquitto's acl_file cannot tie a client id to a username, and
 * use_username_as_clientid would make every connection of a user evict the
 * others. This plugin refuses a CONNECT whose client id belongs to another
 * user, with the same rule as fleet/auth/clientids.py:
 *
 *   the owner of a client id is the user with the longest name that the id
 *   equals or extends with "-"; a device's id must equal its name exactly;
 *   "fleet-controller" and "fleet-controller-..." are nobody's to take; any
 *   other id that belongs to nobody is free for users other than devices and
 *   web users (Home Assistant's default client id is a random one).
 *
 * Expiry. A person's browser user (web role) owns exactly its name, like a
 * device, and only until its expiry (docs/protocol.md 11.2): after it, its
 * CONNECT is refused, every ACL check of a connection still open is denied, and
 * that connection is closed (with its will, so the meeting drops the
 * participant) at the next tick. The ACL file has no time.
 *
 * Passwords and what a user may cost (fleet/auth/limits.py, the same numbers,
 * passed as plugin options). The plugin checks the `$7$` hash itself, with
 * OpenSSL's PBKDF2 (Mosquitto is linked with libcrypto), so it knows which
 * logins succeed:
 *   - a stretched hash (a chosen secret) costs a full check only within a
 *     budget per user (a burst, then a rate); a password that logged in
 *     before, or failed before, is recognised by a keyed digest held in memory;
 *     past the budget an unknown password is refused unhashed. A login flood
 *     against one user costs the broker a digest per attempt, and a client
 *     that logged in before still gets in.
 *   - a homeassistant or agent user (kind 'u') holds at most
 *     `sessions_per_user` sessions: connected, or disconnected less than
 *     `session_expiry` seconds ago unless it was an MQTT 3.1.1 clean session
 *     (an MQTT 5 client's session expiry is not visible to plugins, so its
 *     session counts until Mosquitto's persistent_client_expiration would
 *     have ended it).
 *   - kinds 'u' and 'w' publish within a budget per user over all its
 *     sessions (`publish_burst`, refilled at `publishes_per_s`): past it every
 *     publish is denied (dropped; MQTT 5: PUBACK 0x87), so one user's flood
 *     reaches the controller at that rate at most.
 *   - kinds 'u' and 'w' get nothing queued while offline: every READ check of
 *     a client of theirs that is not connected is denied. Their offline
 *     sessions cost no memory; devices and the controller role keep theirs,
 *     within max_queued_messages and max_queued_bytes.
 *
 * Presence. The broker, not the device, has the last word: when a device user's
 * connection ends, for any reason (a clean DISCONNECT too, which suppresses the
 * will), the plugin publishes the will's `{"online":false}` retained on that
 * device's status topic under `plugin_opt_prefix`, unless the last status that
 * connection published said so itself (a graceful goodbye). A device cannot leave
 * a retained birth behind it and stay "online" for ever.
 *
 * Users come from the file named by `plugin_opt_clientids`, sorted by name,
 * one a line: "d <name> <hash>" for devices, "c <name> <hash>" for
 * controller-role users, "u <name> <hash>" for homeassistant and agent users,
 * "w <name> <expires> <hash>" for web users (expires in Unix seconds); read
 * at start and on every SIGHUP.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* From libcrypto, which Mosquitto itself links: no OpenSSL headers needed to build. */
typedef struct evp_md_st EVP_MD;
extern const EVP_MD *EVP_sha512(void);
extern int PKCS5_PBKDF2_HMAC(const char *pass, int passlen, const unsigned char *salt,
		int saltlen, int iter, const EVP_MD *digest, int keylen, unsigned char *out);
extern int CRYPTO_memcmp(const void *a, const void *b, size_t len);
extern int RAND_bytes(unsigned char *buf, int num);

#define CHEAP_ITERATIONS 101  /* GENERATED_SECRET_ITERATIONS: checked in full always */
#define MAX_ITERATIONS 10000000
#define MAX_HASH_BYTES 64
#define MAX_SALT_BYTES 64
#define DIGEST_BYTES 32
#define FAILURES_REMEMBERED 16
#define ACCOUNT_BUCKETS 4096

struct user {
	char kind;  /* 'd', 'c', 'u' or 'w' */
	const char *name;
	double expires;  /* web users */
	const char *hash;  /* as written, to notice a new secret */
	int iterations;  /* 0: a malformed hash, nothing matches it */
	unsigned char salt[MAX_SALT_BYTES];
	int salt_len;
	unsigned char digest[MAX_HASH_BYTES];
	int digest_len;
};

struct users {
	char *buf;  /* the file, NUL-separated */
	struct user *list;  /* sorted by name */
	size_t count;
};

struct session {
	char *client_id;
	const struct mosquitto *conn;  /* NULL while its client is away */
	double left;  /* when its client left (Unix seconds) */
	bool ends_at_disconnect;  /* an MQTT 3.1.1 clean session */
};

/* What the plugin remembers of one user between logins. */
struct account {
	struct account *next;
	char *name;
	char *hash;  /* the hash the login state below is for */
	unsigned char good[DIGEST_BYTES];
	bool has_good;
	unsigned char bad[FAILURES_REMEMBERED][DIGEST_BYTES];
	int bad_count, bad_next;
	double tokens, stamp;
	double pub_tokens, pub_stamp;  /* publishes of a 'u' or 'w' user */
	unsigned long pub_refused;
	struct session *sessions;
	int session_count, session_cap;
	const struct mosquitto *device_conn;  /* a device's authenticated connection */
	bool said_offline;  /* its last status on that connection said online:false */
};

static mosquitto_plugin_id_t *plugin_id;
static char *users_path;
static char *topic_prefix;  /* the fleet's topic root: fleet/v1 */
static struct users users;
static struct account *accounts[ACCOUNT_BUCKETS];
static unsigned char digest_key[32];
/* Limits, from plugin options (fleet/auth/limits.py). */
static int sessions_per_user = 32;
static double session_expiry_s = 3600;
static double checks_per_s = 2;
static double check_burst = 10;
static double publishes_per_s = 50;
static double publish_burst = 500;
/* Web users whose expiry is at or before this were kicked already. */
static double kicked_until;
/* The web user being kicked: its will (the meeting's leave) is still sent. */
static const char *kicking;
static unsigned long unhashed_refusals;

/* --- the users file ------------------------------------------------------------------ */

static int b64_value(char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '+') return 62;
	if(c == '/') return 63;
	return -1;
}

/* Standard base64 with padding into out (at most cap bytes); -1 when malformed. */
static int b64_decode(const char *in, size_t len, unsigned char *out, int cap)
{
	if(len == 0 || len % 4) return -1;
	int n = 0;
	for(size_t i = 0; i < len; i += 4){
		int v[4];
		for(int j = 0; j < 4; j++){
			char c = in[i + j];
			v[j] = c == '=' && i + 4 == len && j >= 2 ? -2 : b64_value(c);
			if(v[j] == -1) return -1;
		}
		if(v[2] == -2 && v[3] != -2) return -1;
		unsigned int bits = (unsigned)v[0] << 18 | (unsigned)v[1] << 12
			| (unsigned)(v[2] < 0 ? 0 : v[2]) << 6 | (unsigned)(v[3] < 0 ? 0 : v[3]);
		int bytes = v[2] == -2 ? 1 : v[3] == -2 ? 2 : 3;
		if(n + bytes > cap) return -1;
		for(int j = 0; j < bytes; j++) out[n++] = (unsigned char)(bits >> (16 - 8 * j));
	}
	return n;
}

/* "$7$<iterations>$<b64 salt>$<b64 hash>" into u; leaves u->iterations 0 if malformed. */
static void parse_hash(struct user *u)
{
	const char *h = u->hash;
	if(strncmp(h, "$7$", 3)) return;
	char *end;
	long iterations = strtol(h + 3, &end, 10);
	if(*end != '$' || iterations <= 0 || iterations > MAX_ITERATIONS) return;
	const char *salt = end + 1;
	const char *gap = strchr(salt, '$');
	if(!gap) return;
	u->salt_len = b64_decode(salt, (size_t)(gap - salt), u->salt, MAX_SALT_BYTES);
	u->digest_len = b64_decode(gap + 1, strlen(gap + 1), u->digest, MAX_HASH_BYTES);
	if(u->salt_len <= 0 || u->digest_len <= 0) return;
	u->iterations = (int)iterations;
}

static void users_free(struct users *u)
{
	free(u->buf);
	free(u->list);
	memset(u, 0, sizeof(*u));
}

/* The next space-separated field of *line (NUL-terminated in place), or NULL. */
static char *field(char **line)
{
	char *start = *line;
	if(!start || !*start) return NULL;
	char *gap = strchr(start, ' ');
	if(gap){
		*gap = '\0';
		*line = gap + 1;
	}else{
		*line = NULL;
	}
	return start;
}

static int users_load(const char *path, struct users *out)
{
	FILE *f = fopen(path, "rb");
	if(!f) return MOSQ_ERR_UNKNOWN;
	long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
	if(size < 0 || fseek(f, 0, SEEK_SET) != 0){
		fclose(f);
		return MOSQ_ERR_UNKNOWN;
	}
	struct users u = {0};
	u.buf = malloc((size_t)size + 1);
	if(!u.buf || fread(u.buf, 1, (size_t)size, f) != (size_t)size){
		fclose(f);
		users_free(&u);
		return MOSQ_ERR_UNKNOWN;
	}
	fclose(f);
	u.buf[size] = '\0';
	size_t lines = 0;
	for(long i = 0; i < size; i++) lines += u.buf[i] == '\n';
	u.list = calloc(lines + 1, sizeof(struct user));
	if(!u.list){
		users_free(&u);
		return MOSQ_ERR_NOMEM;
	}
	for(char *line = u.buf; *line;){
		char *end = strchr(line, '\n');
		if(end) *end = '\0';
		char *rest = line;
		char *kind = field(&rest);
		char *name = field(&rest);
		char *expires = kind && kind[0] == 'w' ? field(&rest) : NULL;
		char *hash = field(&rest);
		if(kind && strlen(kind) == 1 && strchr("dcuw", kind[0]) && name && hash
				&& (kind[0] != 'w' || expires)){
			struct user *entry = &u.list[u.count++];
			entry->kind = kind[0];
			entry->name = name;
			entry->expires = expires ? strtod(expires, NULL) : 0;
			entry->hash = hash;
			parse_hash(entry);
		}
		if(!end) break;
		line = end + 1;
	}
	*out = u;
	return MOSQ_ERR_SUCCESS;
}

static int by_name(const void *key, const void *item)
{
	return strcmp((const char *)key, ((const struct user *)item)->name);
}

static struct user *find_user(const char *name)
{
	return bsearch(name, users.list, users.count, sizeof(struct user), by_name);
}

/* The controller's client id on a broker without users, and its family. */
static int reserved(const char *id)
{
	static const char name[] = "fleet-controller";
	size_t n = sizeof(name) - 1;
	return !strncmp(id, name, n) && (id[n] == '\0' || id[n] == '-');
}

/* The owner of `id`, or NULL. */
static struct user *owner_of(const char *id)
{
	size_t n = strlen(id);
	char *prefix = malloc(n + 1);
	if(!prefix) return NULL;
	memcpy(prefix, id, n + 1);
	struct user *found = NULL;
	for(size_t len = n; len > 0; len--){
		if(len < n && id[len] != '-') continue;
		prefix[len] = '\0';
		found = find_user(prefix);
		if(found) break;
	}
	free(prefix);
	return found;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double monotonic_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- accounts: login state and sessions per user --------------------------------------- */

static unsigned bucket_of(const char *name)
{
	uint32_t h = 2166136261u;
	for(const unsigned char *p = (const unsigned char *)name; *p; p++){
		h = (h ^ *p) * 16777619u;
	}
	return h % ACCOUNT_BUCKETS;
}

static struct account *find_account(const char *name)
{
	for(struct account *a = accounts[bucket_of(name)]; a; a = a->next){
		if(!strcmp(a->name, name)) return a;
	}
	return NULL;
}

static void account_free(struct account *a)
{
	for(int i = 0; i < a->session_count; i++) free(a->sessions[i].client_id);
	free(a->sessions);
	free(a->name);
	free(a->hash);
	free(a);
}

/* The account of `u`, created on first use; its login state starts afresh with a new hash. */
static struct account *account_of(const struct user *u)
{
	struct account *a = find_account(u->name);
	if(!a){
		a = calloc(1, sizeof(*a));
		if(!a) return NULL;
		a->name = strdup(u->name);
		if(!a->name){
			free(a);
			return NULL;
		}
		unsigned b = bucket_of(u->name);
		a->next = accounts[b];
		accounts[b] = a;
		a->pub_tokens = publish_burst;
		a->pub_stamp = monotonic_s();
	}
	if(!a->hash || strcmp(a->hash, u->hash)){
		char *hash = strdup(u->hash);
		if(!hash) return NULL;
		free(a->hash);
		a->hash = hash;
		a->has_good = false;
		a->bad_count = a->bad_next = 0;
		a->tokens = check_burst;
		a->stamp = monotonic_s();
	}
	return a;
}

/* Forget accounts whose user is gone (web users come and go with every sign-in). */
static void accounts_prune(void)
{
	for(int b = 0; b < ACCOUNT_BUCKETS; b++){
		struct account **link = &accounts[b];
		while(*link){
			struct account *a = *link;
			if(find_user(a->name)){
				link = &a->next;
			}else{
				*link = a->next;
				account_free(a);
			}
		}
	}
}

static void accounts_free(void)
{
	for(int b = 0; b < ACCOUNT_BUCKETS; b++){
		while(accounts[b]){
			struct account *a = accounts[b];
			accounts[b] = a->next;
			account_free(a);
		}
	}
}

/* --- passwords ----------------------------------------------------------------------- */

static bool full_check(const struct user *u, const char *password)
{
	if(u->iterations <= 0) return false;
	unsigned char actual[MAX_HASH_BYTES];
	if(!PKCS5_PBKDF2_HMAC(password, (int)strlen(password), u->salt, u->salt_len,
			u->iterations, EVP_sha512(), u->digest_len, actual)){
		return false;
	}
	return CRYPTO_memcmp(actual, u->digest, (size_t)u->digest_len) == 0;
}

/* What an unknown user's login costs: about what a device's costs. */
static void dummy_check(const char *password)
{
	static const unsigned char salt[12] = "espfleet-xx";
	unsigned char out[MAX_HASH_BYTES];
	PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, sizeof(salt),
			CHEAP_ITERATIONS, EVP_sha512(), MAX_HASH_BYTES, out);
}

static bool password_ok(const struct user *u, const char *password)
{
	if(u->iterations <= CHEAP_ITERATIONS) return full_check(u, password);
	struct account *a = account_of(u);
	if(!a) return false;
	unsigned char digest[DIGEST_BYTES];
	if(!PKCS5_PBKDF2_HMAC(password, (int)strlen(password), digest_key, sizeof(digest_key),
			1, EVP_sha512(), DIGEST_BYTES, digest)){
		return false;
	}
	if(a->has_good && !CRYPTO_memcmp(a->good, digest, DIGEST_BYTES)) return true;
	for(int i = 0; i < a->bad_count; i++){
		if(!CRYPTO_memcmp(a->bad[i], digest, DIGEST_BYTES)){
			unhashed_refusals++;
			return false;
		}
	}
	double now = monotonic_s();
	a->tokens += (now - a->stamp) * checks_per_s;
	if(a->tokens > check_burst) a->tokens = check_burst;
	a->stamp = now;
	if(a->tokens < 1){
		unhashed_refusals++;
		if(unhashed_refusals % 1000 == 1){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"fleet-clientid: refusing logins for '%s' unchecked: over its budget of"
					" full checks (%lu so far)", u->name, unhashed_refusals);
		}
		return false;
	}
	a->tokens -= 1;
	bool ok = full_check(u, password);
	if(ok){
		memcpy(a->good, digest, DIGEST_BYTES);
		a->has_good = true;
	}else{
		memcpy(a->bad[a->bad_next], digest, DIGEST_BYTES);
		a->bad_next = (a->bad_next + 1) % FAILURES_REMEMBERED;
		if(a->bad_count < FAILURES_REMEMBERED) a->bad_count++;
	}
	return ok;
}

/* --- sessions ------------------------------------------------------------------------ */

static void session_drop(struct account *a, int i)
{
	free(a->sessions[i].client_id);
	a->sessions[i] = a->sessions[--a->session_count];
}

/* Record `client` as the connection of its session; false when its user holds too many. */
static bool session_hold(const struct user *u, struct mosquitto *client, const char *id)
{
	struct account *a = account_of(u);
	if(!a) return false;
	double now = now_s();
	for(int i = a->session_count - 1; i >= 0; i--){
		struct session *s = &a->sessions[i];
		if(!s->conn && now >= s->left + session_expiry_s) session_drop(a, i);
	}
	bool ends = mosquitto_client_protocol_version(client) != 5
		&& mosquitto_client_clean_session(client);
	for(int i = 0; i < a->session_count; i++){
		if(!strcmp(a->sessions[i].client_id, id)){
			a->sessions[i].conn = client;
			a->sessions[i].ends_at_disconnect = ends;
			return true;
		}
	}
	if(u->kind == 'u' && a->session_count >= sessions_per_user){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"fleet-clientid: refused client id '%s' for user '%s': it holds %d sessions"
				" already", id, u->name, a->session_count);
		return false;
	}
	if(a->session_count == a->session_cap){
		int cap = a->session_cap ? a->session_cap * 2 : 2;
		struct session *grown = realloc(a->sessions, (size_t)cap * sizeof(*grown));
		if(!grown) return false;
		a->sessions = grown;
		a->session_cap = cap;
	}
	char *copy = strdup(id);
	if(!copy) return false;
	a->sessions[a->session_count++] = (struct session){copy, client, 0, ends};
	return true;
}

static bool online(const char *username, const struct mosquitto *client)
{
	struct account *a = find_account(username);
	if(!a) return false;
	for(int i = 0; i < a->session_count; i++){
		if(a->sessions[i].conn == client) return true;
	}
	return false;
}

/* --- events -------------------------------------------------------------------------- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	const char *id = mosquitto_client_id(ed->client);
	const char *username = ed->username;
	const char *password = ed->password ? ed->password : "";
	if(!username || !id) return MOSQ_ERR_AUTH;
	struct user *self = find_user(username);
	if(!self){
		dummy_check(password);
		return MOSQ_ERR_AUTH;
	}
	struct user *owner = owner_of(id);
	bool own;
	if(self->kind == 'w'){
		if(now_s() >= self->expires){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"fleet-clientid: refused '%s': its credentials expired", username);
			return MOSQ_ERR_AUTH;
		}
		own = owner == self && !strcmp(id, username);
	}else if(self->kind == 'd'){
		own = !strcmp(id, username);
	}else{
		/* Its own family, or an id that is nobody's. */
		own = owner == self || (!owner && !reserved(id));
	}
	if(!own){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"fleet-clientid: refused client id '%s' for user '%s': not its own", id, username);
		return MOSQ_ERR_AUTH;
	}
	if(!password_ok(self, password)) return MOSQ_ERR_AUTH;
	if((self->kind == 'u' || self->kind == 'w') && !session_hold(self, ed->client, id)){
		return MOSQ_ERR_AUTH;
	}
	if(self->kind == 'd'){
		/* The newest login is the device's connection; an older one it takes over ends
		 * without an offline status (the newcomer's birth follows). */
		struct account *a = account_of(self);
		if(a){
			a->device_conn = ed->client;
			a->said_offline = false;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* The top-level `online` of a status payload: 1 true, 0 false, -1 none or unsure
 * (an escaped key could spell it). The last one counts, as for the controller's
 * JSON parser; a key nested in an object below (caps) is not it. */
static int top_level_online(const char *s, uint32_t n)
{
	int depth = 0, result = -1;
	uint32_t i = 0;
	while(i < n){
		char c = s[i];
		if(c != '"'){
			if(c == '{' || c == '[') depth++;
			else if(c == '}' || c == ']') depth--;
			i++;
			continue;
		}
		uint32_t start = ++i;
		bool escaped = false;
		while(i < n && s[i] != '"'){
			if(s[i] == '\\'){
				escaped = true;
				i++;
			}
			i++;
		}
		if(i >= n) return -1;
		uint32_t end = i++;
		if(depth != 1) continue;
		uint32_t j = i;
		while(j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
		if(j >= n || s[j] != ':') continue;  /* a value, not a key */
		j++;
		while(j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
		if(escaped) return -1;
		if(end - start == 6 && !memcmp(s + start, "online", 6)){
			if(n - j >= 4 && !memcmp(s + j, "true", 4)) result = 1;
			else if(n - j >= 5 && !memcmp(s + j, "false", 5)) result = 0;
			else return -1;
		}
		i = j;
	}
	return result;
}

/* A device's publish on its own status topic: remember whether it said goodbye. */
static void note_status(struct user *u, const struct mosquitto_evt_acl_check *ed)
{
	if(!topic_prefix || !ed->topic) return;
	size_t plen = strlen(topic_prefix), nlen = strlen(u->name);
	const char *t = ed->topic;
	if(strncmp(t, topic_prefix, plen) || strncmp(t + plen, "/dev/", 5)
			|| strncmp(t + plen + 5, u->name, nlen) || strcmp(t + plen + 5 + nlen, "/status")){
		return;
	}
	struct account *a = find_account(u->name);
	if(!a || a->device_conn != ed->client) return;
	a->said_offline = top_level_online(ed->payload, ed->payloadlen) == 0;
}

/* The will, whatever the way out: a device's status says offline once its
 * connection is gone (the broker's word, not the client's). */
static void say_offline(const char *device_id)
{
	static const char goodbye[] = "{\"online\":false}";
	if(!topic_prefix) return;
	size_t len = strlen(topic_prefix) + strlen(device_id) + sizeof("/dev//status");
	char *topic = malloc(len);
	if(!topic) return;
	snprintf(topic, len, "%s/dev/%s/status", topic_prefix, device_id);
	int rc = mosquitto_broker_publish_copy(NULL, topic, (int)strlen(goodbye), goodbye, 1, true, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleet-clientid: no offline status for %s", device_id);
	}
	free(topic);
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	struct account *a = username ? find_account(username) : NULL;
	if(!a) return MOSQ_ERR_SUCCESS;
	/* Only the connection that logged in as the device: a refused CONNECT naming it (a
	 * wrong password) must not mark a live device offline. */
	if(a->device_conn == ed->client){
		a->device_conn = NULL;
		if(!a->said_offline) say_offline(a->name);  /* a goodbye of its own said it */
	}
	for(int i = 0; i < a->session_count; i++){
		struct session *s = &a->sessions[i];
		if(s->conn != ed->client) continue;
		if(s->ends_at_disconnect){
			session_drop(a, i);
		}else{
			s->conn = NULL;
			s->left = now_s();
		}
		break;
	}
	return MOSQ_ERR_SUCCESS;
}

/* A publish of a homeassistant, agent or web user, within its budget over all its
 * sessions (a burst, then a rate): a flood is dropped here, not at its subscribers. */
static bool publish_allowed(const struct user *u)
{
	struct account *a = account_of(u);
	if(!a) return true;
	double now = monotonic_s();
	a->pub_tokens += (now - a->pub_stamp) * publishes_per_s;
	if(a->pub_tokens > publish_burst) a->pub_tokens = publish_burst;
	a->pub_stamp = now;
	if(a->pub_tokens < 1){
		if(a->pub_refused++ % 10000 == 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"fleet-clientid: dropping publishes of '%s': over its budget of %g a second"
					" (%lu dropped)", u->name, publishes_per_s, a->pub_refused);
		}
		return false;
	}
	a->pub_tokens -= 1;
	return true;
}

/* Per message and subscription: an expired web user may do nothing, even on a
 * connection opened before its expiry; nothing is queued for an offline client of a
 * homeassistant, agent or web user. Others are the ACL file's to decide. */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(!username) return MOSQ_ERR_PLUGIN_DEFER;
	struct user *u = find_user(username);
	if(!u) return MOSQ_ERR_PLUGIN_DEFER;
	if(u->kind == 'w' && now_s() >= u->expires
			&& !(u->name == kicking && ed->access == MOSQ_ACL_WRITE)){
		return MOSQ_ERR_ACL_DENIED;
	}
	if((u->kind == 'u' || u->kind == 'w') && ed->access == MOSQ_ACL_READ
			&& !online(username, ed->client)){
		return MOSQ_ERR_ACL_DENIED;
	}
	if(u->kind == 'd' && ed->access == MOSQ_ACL_WRITE) note_status(u, ed);
	if((u->kind == 'u' || u->kind == 'w') && ed->access == MOSQ_ACL_WRITE
			&& !publish_allowed(u)){
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* Close the connections of web users that expired since the last call. */
static void kick_expired(void)
{
	double now = now_s();
	for(size_t i = 0; i < users.count; i++){
		const struct user *u = &users.list[i];
		if(u->kind != 'w') continue;
		if(u->expires > kicked_until && u->expires <= now){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"fleet-clientid: closing '%s': its credentials expired", u->name);
			kicking = u->name;  /* the kick sends the will at once, through on_acl_check */
			mosquitto_kick_client_by_username(u->name, true);
			kicking = NULL;
		}
	}
	kicked_until = now;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	kick_expired();
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	struct users fresh;
	if(users_load(users_path, &fresh) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet-clientid: cannot read %s; keeping the users read before", users_path);
		return MOSQ_ERR_SUCCESS;
	}
	kick_expired();  /* a fresh list may have swept users that expired since the tick */
	users_free(&users);
	users = fresh;
	accounts_prune();
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		if(!strcmp(key, "clientids")) users_path = strdup(value);
		else if(!strcmp(key, "sessions_per_user")) sessions_per_user = atoi(value);
		else if(!strcmp(key, "session_expiry")) session_expiry_s = strtod(value, NULL);
		else if(!strcmp(key, "checks_per_s")) checks_per_s = strtod(value, NULL);
		else if(!strcmp(key, "check_burst")) check_burst = strtod(value, NULL);
		else if(!strcmp(key, "prefix")) topic_prefix = strdup(value);
		else if(!strcmp(key, "publishes_per_s")) publishes_per_s = strtod(value, NULL);
		else if(!strcmp(key, "publish_burst")) publish_burst = strtod(value, NULL);
	}
	if(!users_path){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet-clientid: plugin_opt_clientids is required");
		return MOSQ_ERR_INVAL;
	}
	if(RAND_bytes(digest_key, sizeof(digest_key)) != 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet-clientid: no random bytes for its key");
		return MOSQ_ERR_UNKNOWN;
	}
	if(users_load(users_path, &users) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet-clientid: cannot read %s", users_path);
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	users_free(&users);
	accounts_free();
	free(users_path);
	users_path = NULL;
	free(topic_prefix);
	topic_prefix = NULL;
	return MOSQ_ERR_SUCCESS;
}
