/*
 * A bounded JSON parser for the agent's requests (docs/processes.md, "Agent wire protocol
 * additions"): depth at most JSON_MAX_DEPTH, strings at most JSON_MAX_STRING decoded bytes,
 * arrays and objects at most JSON_MAX_ARRAY entries. Every value lives in one arena freed at once.
 * Input is a single line of at most MAX_LINE bytes, so the arena stays small.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

#define MAX_SAFE_INT 9007199254740991ULL /* 2^53-1: integers must survive a JavaScript number */

struct block {
    struct block *next;
    size_t used, cap;
    char mem[];
};

struct jdoc {
    struct block *blocks;
    struct jval *root;
    const char *limit_err; /* valid JSON beyond a bound: the request is refused, but with its id */
};

static void *arena_alloc(struct jdoc *d, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!d->blocks || d->blocks->cap - d->blocks->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        struct block *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = d->blocks, b->used = 0, b->cap = cap;
        d->blocks = b;
    }
    void *p = d->blocks->mem + d->blocks->used;
    d->blocks->used += n;
    memset(p, 0, n);
    return p;
}

struct parser {
    const unsigned char *p, *end;
    struct jdoc *doc;
    const char *err;
};

static void ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r' || *ps->p == '\n')) ps->p++;
}

static int peek(struct parser *ps)
{
    return ps->p < ps->end ? *ps->p : -1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(struct parser *ps, unsigned *v)
{
    *v = 0;
    if (ps->end - ps->p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        int h = hexval(*ps->p++);
        if (h < 0) return -1;
        *v = *v << 4 | (unsigned)h;
    }
    return 0;
}

static size_t put_utf8(char *dst, unsigned cp)
{
    if (cp < 0x80) return dst[0] = (char)cp, 1;
    if (cp < 0x800) return dst[0] = (char)(0xc0 | cp >> 6), dst[1] = (char)(0x80 | (cp & 0x3f)), 2;
    if (cp < 0x10000)
        return dst[0] = (char)(0xe0 | cp >> 12), dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
               dst[2] = (char)(0x80 | (cp & 0x3f)), 3;
    dst[0] = (char)(0xf0 | cp >> 18), dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes a string (escapes to UTF-8) into the arena; the decoded form is never longer than the source. */
static int parse_string(struct parser *ps, char **out, size_t *len)
{
    const unsigned char *q = ps->p + 1;
    while (q < ps->end && *q != '"') q += *q == '\\' ? 2 : 1;
    if (q >= ps->end) return -1;
    char *dst = arena_alloc(ps->doc, (size_t)(q - ps->p) + 1);
    size_t n = 0;
    if (!dst) return ps->err = "out of memory", -1;
    ps->p++;
    while (ps->p < ps->end) {
        unsigned c = *ps->p++;
        if (c == '"') {
            if (n > JSON_MAX_STRING) ps->doc->limit_err = "string too long (max 65536 bytes)";
            dst[n] = 0;
            *out = dst, *len = n;
            return 0;
        }
        if (c < 0x20) return -1;
        if (c != '\\') {
            dst[n++] = (char)c;
            continue;
        }
        if (ps->p >= ps->end) return -1;
        switch (c = *ps->p++) {
        case '"':
        case '\\':
        case '/':
            dst[n++] = (char)c;
            break;
        case 'b':
            dst[n++] = '\b';
            break;
        case 'f':
            dst[n++] = '\f';
            break;
        case 'n':
            dst[n++] = '\n';
            break;
        case 'r':
            dst[n++] = '\r';
            break;
        case 't':
            dst[n++] = '\t';
            break;
        case 'u': {
            unsigned v, lo;
            if (hex4(ps, &v)) return -1;
            if (v >= 0xd800 && v <= 0xdbff && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                const unsigned char *save = ps->p;
                ps->p += 2;
                if (hex4(ps, &lo)) return -1;
                if (lo >= 0xdc00 && lo <= 0xdfff)
                    v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
                else
                    ps->p = save;
            }
            if (v >= 0xd800 && v <= 0xdfff) v = 0xfffd; /* a lone surrogate */
            n += put_utf8(dst + n, v);                  /* \uXXXX is 6 source bytes, at most 4 decoded */
            break;
        }
        default:
            return -1;
        }
    }
    return -1;
}

static int parse_number(struct parser *ps, struct jval *v)
{
    int integer = 1, overflow = 0;
    unsigned long long u = 0;
    if (peek(ps) == '-') ps->p++, integer = 0;
    if (!isdigit(peek(ps))) return -1;
    if (peek(ps) == '0')
        ps->p++;
    else
        while (isdigit(peek(ps))) {
            unsigned d = (unsigned)(*ps->p++ - '0');
            if (u > (MAX_SAFE_INT - d) / 10)
                overflow = 1;
            else
                u = u * 10 + d;
        }
    if (peek(ps) == '.') {
        ps->p++, integer = 0;
        if (!isdigit(peek(ps))) return -1;
        while (isdigit(peek(ps))) ps->p++;
    }
    if (peek(ps) == 'e' || peek(ps) == 'E') {
        ps->p++, integer = 0;
        if (peek(ps) == '+' || peek(ps) == '-') ps->p++;
        if (!isdigit(peek(ps))) return -1;
        while (isdigit(peek(ps))) ps->p++;
    }
    v->type = J_NUM;
    v->is_uint = integer && !overflow;
    v->uint = v->is_uint ? u : 0;
    return 0;
}

static int literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return -1;
    ps->p += n;
    return 0;
}

static struct jval *parse_value(struct parser *ps, int depth);

/* Arrays and objects: entries linked in order, at most JSON_MAX_ARRAY. */
static int parse_container(struct parser *ps, struct jval *v, int depth)
{
    int object = *ps->p == '{';
    struct jval **tail = &v->first;
    v->type = object ? J_OBJ : J_ARR;
    ps->p++;
    ws(ps);
    if (peek(ps) == (object ? '}' : ']')) return ps->p++, 0;
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        ws(ps);
        if (object) {
            if (peek(ps) != '"' || parse_string(ps, &key, &key_len)) return -1;
            ws(ps);
            if (peek(ps) != ':') return -1;
            ps->p++;
        }
        struct jval *e = parse_value(ps, depth + 1);
        if (!e) return -1;
        e->key = key, e->key_len = key_len;
        if (v->len < JSON_MAX_ARRAY) {
            v->len++;
            *tail = e, tail = &e->next;
        } else {
            ps->doc->limit_err = "too many entries (max 4096 per array or object)";
        }
        ws(ps);
        if (peek(ps) == ',') {
            ps->p++;
            continue;
        }
        if (peek(ps) == (object ? '}' : ']')) return ps->p++, 0;
        return -1;
    }
}

/* Skips a container nested beyond the bound without recursion (strings may hold brackets). */
static int skip_container(struct parser *ps)
{
    int depth = 0;
    while (ps->p < ps->end) {
        unsigned c = *ps->p++;
        if (c == '"') {
            while (ps->p < ps->end && *ps->p != '"') ps->p += *ps->p == '\\' ? 2 : 1;
            if (ps->p >= ps->end) return -1;
            ps->p++;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if ((c == ']' || c == '}') && --depth == 0) {
            return 0;
        }
    }
    return -1;
}

static struct jval *parse_value(struct parser *ps, int depth)
{
    ws(ps);
    struct jval *v = arena_alloc(ps->doc, sizeof *v);
    if (!v) return ps->err = "out of memory", NULL;
    int rc;
    switch (peek(ps)) {
    case '{':
    case '[':
        if (depth >= JSON_MAX_DEPTH) {
            ps->doc->limit_err = "nested too deep (max 8 levels of params)";
            v->type = J_NULL;
            rc = skip_container(ps);
            break;
        }
        rc = parse_container(ps, v, depth);
        break;
    case '"':
        v->type = J_STR;
        rc = parse_string(ps, &v->str, &v->len);
        break;
    case 't':
        v->type = J_BOOL, v->boolean = 1;
        rc = literal(ps, "true");
        break;
    case 'f':
        v->type = J_BOOL;
        rc = literal(ps, "false");
        break;
    case 'n':
        v->type = J_NULL;
        rc = literal(ps, "null");
        break;
    default:
        rc = parse_number(ps, v);
    }
    return rc ? NULL : v;
}

struct jdoc *json_parse(const char *text, size_t n, const char **err)
{
    struct jdoc *d = calloc(1, sizeof *d);
    struct parser ps = {(const unsigned char *)text, (const unsigned char *)text + n, d, NULL};
    if (!d) return *err = "out of memory", NULL;
    d->root = parse_value(&ps, 0);
    if (d->root) ws(&ps);
    if (!d->root || ps.p != ps.end) {
        *err = ps.err && d->root == NULL ? ps.err : "invalid JSON";
        json_free(d);
        return NULL;
    }
    return d;
}

struct jval *json_root(struct jdoc *d)
{
    return d->root;
}

const char *json_limit_error(struct jdoc *d)
{
    return d->limit_err;
}

void json_free(struct jdoc *d)
{
    if (!d) return;
    while (d->blocks) {
        struct block *b = d->blocks;
        d->blocks = b->next;
        free(b);
    }
    free(d);
}

struct jval *json_get(const struct jval *obj, const char *key)
{
    size_t n = strlen(key);
    if (!obj || obj->type != J_OBJ) return NULL;
    for (struct jval *e = obj->first; e; e = e->next)
        if (e->key_len == n && !memcmp(e->key, key, n)) return e;
    return NULL;
}

const char *json_cstr(const struct jval *v)
{
    if (!v || v->type != J_STR || strlen(v->str) != v->len) return NULL;
    return v->str;
}

/* A JSON array of strings as a NULL-terminated vector pointing into the document (free the vector only). */
const char *json_strings(const struct jval *v, const char *what, char ***out, int need_one)
{
    size_t i = 0;
    if (!v || v->type != J_ARR) return fail("%s must be an array of strings", what);
    if (need_one && !v->len) return fail("%s must not be empty", what);
    char **arr = calloc(v->len + 1, sizeof *arr);
    if (!arr) return "out of memory";
    for (const struct jval *e = v->first; e; e = e->next) {
        if (!json_cstr(e)) return free(arr), fail("%s must hold strings without NUL bytes", what);
        arr[i++] = e->str;
    }
    *out = arr;
    return NULL;
}
