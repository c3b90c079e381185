/* Mosquitto 2.0 plugin: a client id belongs to one user (docs/protocol.md 11).
 *
 * Mosquitto's acl_file cannot tie a client id to a username, and
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
 * A person's browser user (web role) owns exactly its name, like a device, and
 * only until its expiry (docs/protocol.md 11.2): after it, its CONNECT is refused,
 * every ACL check of a connection still open is denied, and that connection is
 * closed (with its will, so the meeting drops the participant) at the next tick.
 * The ACL file has no time; password_file alone would keep an open page's rights.
 *
 * It only refuses: when the id is the user's own it defers, so password_file
 * still checks the password. Users come from the file named by
 * `plugin_opt_clientids` (lines "d <name>" for devices, "w <name> <expires>"
 * for web users, expires in Unix seconds, "u <name>" for others, sorted by
 * name), read at start and on every SIGHUP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

struct users {
	char *buf;     /* the file, NUL-separated */
	char **names;  /* sorted; names[i][-2] is the kind ('d', 'w' or 'u'); a 'w'
	                  name is followed by its NUL and its expiry */
	size_t count;
};

static mosquitto_plugin_id_t *plugin_id;
static char *users_path;
static struct users users;
/* Web users whose expiry is at or before this were kicked already. */
static double kicked_until;
/* The web user being kicked: its will (the meeting's leave) is still sent. */
static const char *kicking;

static void users_free(struct users *u)
{
	free(u->buf);
	free(u->names);
	memset(u, 0, sizeof(*u));
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
	u.names = calloc(lines + 1, sizeof(char *));
	if(!u.names){
		users_free(&u);
		return MOSQ_ERR_NOMEM;
	}
	for(char *line = u.buf; *line;){
		char *end = strchr(line, '\n');
		if(end) *end = '\0';
		if((line[0] == 'd' || line[0] == 'u' || line[0] == 'w') && line[1] == ' ' && line[2]){
			char *gap = line[0] == 'w' ? strchr(line + 2, ' ') : NULL;
			if(line[0] != 'w' || gap){
				if(gap) *gap = '\0';
				u.names[u.count++] = line + 2;
			}
		}
		if(!end) break;
		line = end + 1;
	}
	*out = u;
	return MOSQ_ERR_SUCCESS;
}

static int by_name(const void *key, const void *item)
{
	return strcmp((const char *)key, *(char *const *)item);
}

/* The controller's client id on a broker without users, and its family. */
static int reserved(const char *id)
{
	static const char name[] = "fleet-controller";
	size_t n = sizeof(name) - 1;
	return !strncmp(id, name, n) && (id[n] == '\0' || id[n] == '-');
}

/* The owner's entry for `id`, or NULL. */
static char *owner_of(const char *id)
{
	size_t n = strlen(id);
	char *prefix = malloc(n + 1);
	if(!prefix) return NULL;
	memcpy(prefix, id, n + 1);
	char *found = NULL;
	for(size_t len = n; len > 0; len--){
		if(len < n && id[len] != '-') continue;
		prefix[len] = '\0';
		char **hit = bsearch(prefix, users.names, users.count, sizeof(char *), by_name);
		if(hit){
			found = *hit;
			break;
		}
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

/* A web entry's expiry in Unix seconds. */
static double expiry_of(const char *entry)
{
	return strtod(entry + strlen(entry) + 1, NULL);
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	const char *id = mosquitto_client_id(ed->client);
	const char *username = ed->username;
	if(!username || !id) return MOSQ_ERR_AUTH;
	char *owner = owner_of(id);
	if(owner && owner[-2] == 'w' && !strcmp(owner, username) && !strcmp(id, username)){
		if(now_s() < expiry_of(owner)) return MOSQ_ERR_PLUGIN_DEFER;
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"fleet-clientid: refused '%s': its credentials expired", username);
		return MOSQ_ERR_AUTH;
	}
	if(owner && owner[-2] != 'w' && !strcmp(owner, username)
			&& (owner[-2] != 'd' || !strcmp(id, username))){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if(!owner && !reserved(id)){
		/* Nobody's id: free for a user of kind 'u' (not a device, not a web user). */
		char **self = bsearch(username, users.names, users.count, sizeof(char *), by_name);
		if(self && (*self)[-2] == 'u') return MOSQ_ERR_PLUGIN_DEFER;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"fleet-clientid: refused client id '%s' for user '%s': not its own", id, username);
	return MOSQ_ERR_AUTH;
}

/* Per message and subscription: an expired web user may do nothing, even on a
 * connection opened before its expiry. Others are the ACL file's to decide. */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(!username) return MOSQ_ERR_PLUGIN_DEFER;
	char **hit = bsearch(username, users.names, users.count, sizeof(char *), by_name);
	if(hit && (*hit)[-2] == 'w' && now_s() >= expiry_of(*hit)
			&& !(*hit == kicking && ed->access == MOSQ_ACL_WRITE)){
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* Close the connections of web users that expired since the last call. */
static void kick_expired(void)
{
	double now = now_s();
	for(size_t i = 0; i < users.count; i++){
		const char *name = users.names[i];
		if(name[-2] != 'w') continue;
		double expires = expiry_of(name);
		if(expires > kicked_until && expires <= now){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"fleet-clientid: closing '%s': its credentials expired", name);
			kicking = name;  /* the kick sends the will at once, through on_acl_check */
			mosquitto_kick_client_by_username(name, true);
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
		if(!strcmp(options[i].key, "clientids")) users_path = strdup(options[i].value);
	}
	if(!users_path){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet-clientid: plugin_opt_clientids is required");
		return MOSQ_ERR_INVAL;
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
	users_free(&users);
	free(users_path);
	users_path = NULL;
	return MOSQ_ERR_SUCCESS;
}
