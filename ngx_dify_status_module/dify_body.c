/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Validation of the batch-status JSON body: the common form read in one
 * pass; any other body, a scan of its bytes, then jansson.  Pure logic:
 * no nginx header is included here.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "dify_body.h"
#include "dify_request.h"


/*
 * JSON_DECODE_INT_AS_REAL: integers beyond 64 bits are valid JSON and
 * Python reads them; without the flag jansson fails on them.
 */
#define DIFY_BODY_JSON_FLAGS                                                  \
    (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

#define DIFY_BODY_STACK_IDS  32     /* ids sorted without malloc() */


typedef struct {
    uint64_t              hi;       /* a UUID's 128 bits */
    uint64_t              lo;
    const unsigned char  *data;     /* any other id, as it is */
    size_t                len;
    size_t                index;    /* in document_ids */
} dify_body_id_t;


static int dify_body_fast(const unsigned char *p, const unsigned char *last,
    size_t max, const dify_body_conf_t *conf, dify_body_result_t *res,
    dify_body_rc_e *rc);
static const unsigned char *dify_body_ws(const unsigned char *p,
    const unsigned char *last);
static dify_body_rc_e dify_body_scan(const unsigned char *p,
    const unsigned char *last, size_t max, dify_body_result_t *res);
static dify_body_rc_e dify_body_ids(json_t *ids,
    const dify_body_conf_t *conf, dify_body_result_t *res);
static dify_body_rc_e dify_body_count(size_t n, size_t bad,
    const dify_body_conf_t *conf, dify_body_result_t *res);
static dify_body_id_t *dify_body_id_array(size_t n, dify_body_id_t *stack,
    dify_body_result_t *res);
static dify_body_rc_e dify_body_duplicates(dify_body_id_t *v, size_t n,
    int any, dify_body_result_t *res);
static void dify_body_uuid_bits(const unsigned char *p, dify_body_id_t *id);
static int dify_body_cmp_uuid(const void *one, const void *two);
static int dify_body_cmp_any(const void *one, const void *two);
static void dify_body_error(dify_body_result_t *res, const char *text);


dify_body_rc_e
dify_body_validate(const unsigned char *data, size_t len,
    const dify_body_conf_t *conf, dify_body_result_t *res)
{
    size_t           max;
    json_t          *root, *ids;
    json_error_t     err;
    dify_body_rc_e   rc;

    res->documents = 0;
    res->fast = 0;
    res->message[0] = '\0';

    /*
     * For BAD_REQUEST the message is for the log, not for the client:
     * the contract's message is fixed.
     */

    if (len == 0) {
        dify_body_error(res, "empty body");
        return DIFY_BODY_BAD_REQUEST;
    }

    /* orjson refuses a UTF-8 byte order mark (json.loads() would skip it) */

    if (len >= 3 && data[0] == 0xef && data[1] == 0xbb && data[2] == 0xbf) {
        dify_body_error(res, "a UTF-8 byte order mark");
        return DIFY_BODY_BAD_REQUEST;
    }

    /* the values jansson would build: the root, the array, the ids, more */

    max = conf->max_documents;

    if (max == 0 || max > SIZE_MAX - 2 - DIFY_BODY_EXTRA_VALUES) {
        max = SIZE_MAX;

    } else {
        max += 2 + DIFY_BODY_EXTRA_VALUES;
    }

    if (!conf->no_fast && dify_body_fast(data, data + len, max, conf, res, &rc))
    {
        res->fast = 1;
        return rc;
    }

    /*
     * A raw NUL is never JSON (in a string it must be escaped), but
     * jansson skips one right after a number or a literal
     */

    if (memchr(data, '\0', len) != NULL) {
        dify_body_error(res, "a NUL byte");
        return DIFY_BODY_BAD_REQUEST;
    }

    rc = dify_body_scan(data, data + len, max, res);
    if (rc != DIFY_BODY_OK) {
        return rc;
    }

    root = json_loadb((const char *) data, len, DIFY_BODY_JSON_FLAGS, &err);

    if (root == NULL) {

        /*
         * jansson returns NULL without an error when an allocation
         * fails; the error's code is then not set either.
         */

        if (err.text[0] == '\0'
            || json_error_code(&err) == json_error_out_of_memory)
        {
            dify_body_error(res, "out of memory");
            return DIFY_BODY_NOMEM;
        }

        dify_body_error(res, err.text);
        return DIFY_BODY_BAD_REQUEST;
    }

    if (!json_is_object(root)) {
        json_decref(root);
        dify_body_error(res, "not an object");
        return DIFY_BODY_BAD_REQUEST;
    }

    ids = json_object_get(root, "document_ids");

    if (ids == NULL) {
        json_decref(root);
        snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                 "document_ids is required.");
        return DIFY_BODY_INVALID_PARAM;
    }

    rc = dify_body_ids(ids, conf, res);

    json_decref(root);

    return rc;
}


/*
 * The body every client sends: {"document_ids": ["...", ...]}, with any
 * JSON whitespace around the tokens and nothing else, each id printable
 * ASCII without '"' or '\'.  For such a body jansson would build exactly
 * that object, an array of those strings, byte for byte (no escape to
 * decode, one key, so no duplicate keys), and the scan would find depth
 * 2, no BOM, no NUL, and n + 2 values: so the ids are checked here, in
 * the one pass that reads them, with nothing built.  Returns 0, having
 * decided nothing, when the body is of any other form, or holds more ids
 * than the value budget allows: the scan and jansson then decide, as
 * they do for every other body, with the same answers.
 */

static int
dify_body_fast(const unsigned char *p, const unsigned char *last, size_t max,
    const dify_body_conf_t *conf, dify_body_result_t *res, dify_body_rc_e *rc)
{
    size_t                i, n, bad;
    dify_body_id_t       *v;
    const unsigned char  *ids, *s;
    dify_body_id_t        stack[DIFY_BODY_STACK_IDS];

    static const char     key[] = "\"document_ids\"";

    p = dify_body_ws(p, last);

    if (p == last || *p++ != '{') {
        return 0;
    }

    p = dify_body_ws(p, last);

    if ((size_t) (last - p) < sizeof(key) - 1
        || memcmp(p, key, sizeof(key) - 1) != 0)
    {
        return 0;
    }

    p = dify_body_ws(p + sizeof(key) - 1, last);

    if (p == last || *p++ != ':') {
        return 0;
    }

    p = dify_body_ws(p, last);

    if (p == last || *p++ != '[') {
        return 0;
    }

    ids = p;
    n = 0;
    bad = SIZE_MAX;             /* the first id that is not a UUID */

    p = dify_body_ws(p, last);

    if (p != last && *p == ']') {
        p++;

    } else {

        for ( ;; ) {

            if (p == last || *p++ != '"') {
                return 0;
            }

            for (s = p; p != last && *p != '"'; p++) {
                if (*p < 0x20 || *p > 0x7e || *p == '\\') {
                    return 0;
                }
            }

            if (p == last) {
                return 0;
            }

            /* the root and the array are values too */

            if (n + 2 >= max) {
                return 0;
            }

            if (!conf->ids_any && bad == SIZE_MAX
                && !dify_is_uuid(s, p - s))
            {
                bad = n;
            }

            n++;
            p = dify_body_ws(p + 1, last);

            if (p == last) {
                return 0;
            }

            if (*p == ']') {
                p++;
                break;
            }

            if (*p++ != ',') {
                return 0;
            }

            p = dify_body_ws(p, last);
        }
    }

    p = dify_body_ws(p, last);

    if (p == last || *p++ != '}') {
        return 0;
    }

    if (dify_body_ws(p, last) != last) {
        return 0;
    }

    *rc = dify_body_count(n, bad, conf, res);

    if (*rc == DIFY_BODY_OK && conf->reject_duplicates && n > 1) {

        v = dify_body_id_array(n, stack, res);
        if (v == NULL) {
            *rc = DIFY_BODY_NOMEM;
            return 1;
        }

        /* the ids again, between quotes: no id holds one */

        for (i = 0, p = ids; i < n; i++) {
            p = (const unsigned char *) memchr(p, '"', last - p) + 1;
            s = memchr(p, '"', last - p);

            v[i].data = p;
            v[i].len = s - p;
            v[i].index = i;

            p = s + 1;
        }

        *rc = dify_body_duplicates(v, n, conf->ids_any, res);

        if (v != stack) {
            free(v);
        }
    }

    if (*rc == DIFY_BODY_OK) {
        res->documents = n;
    }

    return 1;
}


/* JSON's whitespace, as jansson and orjson read it */

static const unsigned char *
dify_body_ws(const unsigned char *p, const unsigned char *last)
{
    while (p != last
           && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    {
        p++;
    }

    return p;
}


/*
 * Nesting and values, in one pass, without building anything.  Exact
 * for valid JSON; over anything else it still counts every value the
 * parser could build before it stops, so that it bounds jansson's work.
 * A string is a key when it opens an object's member; every other
 * string, number, literal, object and array is a value.
 */

static dify_body_rc_e
dify_body_scan(const unsigned char *p, const unsigned char *last, size_t max,
    dify_body_result_t *res)
{
    size_t         depth, values;
    uint64_t       objects;         /* bit n: level n + 1 is an object */
    unsigned       key;             /* a string here is a key */
    unsigned char  c;

    depth = 0;
    values = 0;
    objects = 0;
    key = 0;

    while (p < last) {

        c = *p++;

        switch (c) {

        case ' ':
        case '\t':
        case '\n':
        case '\r':
            continue;

        case '"':
            while (p < last) {
                c = *p++;

                if (c == '"') {
                    break;
                }

                if (c == '\\' && p < last) {
                    p++;
                }
            }

            if (key) {
                key = 0;
                continue;
            }

            break;

        case '{':
        case '[':
            if (depth == DIFY_BODY_MAX_DEPTH) {
                snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                         "nested deeper than %d levels", DIFY_BODY_MAX_DEPTH);
                return DIFY_BODY_BAD_REQUEST;
            }

            if (c == '{') {
                objects |= (uint64_t) 1 << depth;
                key = 1;

            } else {
                objects &= ~((uint64_t) 1 << depth);
                key = 0;
            }

            depth++;
            break;

        case '}':
        case ']':
            if (depth > 0) {
                depth--;
            }

            key = 0;
            continue;

        case ',':
            key = depth > 0 && ((objects >> (depth - 1)) & 1);
            continue;

        case ':':
            key = 0;
            continue;

        default:

            /* a number, a literal, or garbage: up to the next delimiter */

            while (p < last) {
                c = *p;

                if (c == ' ' || c == '\t' || c == '\n' || c == '\r'
                    || c == '"' || c == ',' || c == ':' || c == '{'
                    || c == '}' || c == '[' || c == ']')
                {
                    break;
                }

                p++;
            }

            key = 0;
            break;
        }

        /* a value starts here */

        if (++values > max) {
            snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                     "Request body must not hold more than %zu JSON values.",
                     max);
            return DIFY_BODY_TOO_MANY_VALUES;
        }
    }

    return DIFY_BODY_OK;
}


static dify_body_rc_e
dify_body_ids(json_t *ids, const dify_body_conf_t *conf,
    dify_body_result_t *res)
{
    size_t           i, n, bad;
    json_t          *item;
    dify_body_id_t  *v;
    dify_body_rc_e   rc;
    dify_body_id_t   stack[DIFY_BODY_STACK_IDS];

    if (!json_is_array(ids)) {
        snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                 "document_ids must be an array of strings.");
        return DIFY_BODY_INVALID_PARAM;
    }

    n = json_array_size(ids);

    if (conf->max_documents != 0 && n > conf->max_documents) {
        return dify_body_count(n, SIZE_MAX, conf, res);
    }

    bad = SIZE_MAX;

    for (i = 0; i < n; i++) {
        item = json_array_get(ids, i);

        if (!json_is_string(item)) {
            snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                     "document_ids[%zu] must be a string.", i);
            return DIFY_BODY_INVALID_PARAM;
        }

        if (!conf->ids_any
            && !dify_is_uuid((const unsigned char *) json_string_value(item),
                             json_string_length(item)))
        {
            bad = i;
            break;
        }
    }

    rc = dify_body_count(n, bad, conf, res);

    if (rc == DIFY_BODY_OK && conf->reject_duplicates && n > 1) {

        v = dify_body_id_array(n, stack, res);
        if (v == NULL) {
            return DIFY_BODY_NOMEM;
        }

        for (i = 0; i < n; i++) {
            item = json_array_get(ids, i);

            v[i].data = (const unsigned char *) json_string_value(item);
            v[i].len = json_string_length(item);
            v[i].index = i;
        }

        rc = dify_body_duplicates(v, n, conf->ids_any, res);

        if (v != stack) {
            free(v);
        }
    }

    if (rc == DIFY_BODY_OK) {
        res->documents = n;
    }

    return rc;
}


/*
 * Row 7 for n string ids, the first of them that is not a UUID at index
 * bad (SIZE_MAX: none): the count first, then that id; duplicates are
 * the caller's.
 */

static dify_body_rc_e
dify_body_count(size_t n, size_t bad, const dify_body_conf_t *conf,
    dify_body_result_t *res)
{
    if (conf->max_documents != 0 && n > conf->max_documents) {
        snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                 "document_ids must not contain more than %zu items.",
                 conf->max_documents);
        return DIFY_BODY_INVALID_PARAM;
    }

    if (bad != SIZE_MAX) {
        snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
                 "document_ids[%zu] is not a valid UUID.", bad);
        return DIFY_BODY_INVALID_PARAM;
    }

    return DIFY_BODY_OK;
}


/* room for n ids: on the stack when they fit, else malloc()'s */

static dify_body_id_t *
dify_body_id_array(size_t n, dify_body_id_t *stack, dify_body_result_t *res)
{
    dify_body_id_t  *v;

    if (n <= DIFY_BODY_STACK_IDS) {
        return stack;
    }

    v = NULL;

    if (n <= SIZE_MAX / sizeof(dify_body_id_t)) {
        v = malloc(n * sizeof(dify_body_id_t));
    }

    if (v == NULL) {
        snprintf(res->message, DIFY_BODY_MESSAGE_LEN, "out of memory");
    }

    return v;
}


/*
 * Sorts the ids by (value, index): equal values stand together, the
 * first of each run at its lowest index.  Any other item of a run
 * repeats that first one; the lowest index among them is the first
 * duplicate in document order.  Every id is a string here, and a UUID
 * unless "any"; data, len and index are set.
 */

static dify_body_rc_e
dify_body_duplicates(dify_body_id_t *v, size_t n, int any,
    dify_body_result_t *res)
{
    int              eq;
    size_t           i, g, first, later;

    if (!any) {
        for (i = 0; i < n; i++) {
            dify_body_uuid_bits(v[i].data, &v[i]);
        }
    }

    qsort(v, n, sizeof(dify_body_id_t),
          any ? dify_body_cmp_any : dify_body_cmp_uuid);

    first = 0;
    later = n;              /* none */
    g = 0;                  /* the first of the current run */

    for (i = 1; i < n; i++) {

        if (any) {
            eq = v[i].len == v[g].len
                 && memcmp(v[i].data, v[g].data, v[i].len) == 0;

        } else {
            eq = v[i].hi == v[g].hi && v[i].lo == v[g].lo;
        }

        if (!eq) {
            g = i;
            continue;
        }

        if (v[i].index < later) {
            later = v[i].index;
            first = v[g].index;
        }
    }

    if (later == n) {
        return DIFY_BODY_OK;
    }

    snprintf(res->message, DIFY_BODY_MESSAGE_LEN,
             "document_ids[%zu] duplicates document_ids[%zu].", later, first);

    return DIFY_BODY_INVALID_PARAM;
}


/* p is a UUID (dify_is_uuid), in either case */

static void
dify_body_uuid_bits(const unsigned char *p, dify_body_id_t *id)
{
    size_t         i, n;
    uint64_t       v[2];
    unsigned char  c;

    v[0] = 0;
    v[1] = 0;

    for (i = 0, n = 0; i < 36; i++) {
        c = p[i];

        if (c == '-') {
            continue;
        }

        c = (c <= '9') ? c - '0' : (c | 0x20) - 'a' + 10;

        v[n >> 4] = (v[n >> 4] << 4) | c;
        n++;
    }

    id->hi = v[0];
    id->lo = v[1];
}


static int
dify_body_cmp_uuid(const void *one, const void *two)
{
    const dify_body_id_t  *a, *b;

    a = one;
    b = two;

    if (a->hi != b->hi) {
        return a->hi < b->hi ? -1 : 1;
    }

    if (a->lo != b->lo) {
        return a->lo < b->lo ? -1 : 1;
    }

    return (a->index > b->index) - (a->index < b->index);
}


static int
dify_body_cmp_any(const void *one, const void *two)
{
    int                    rc;
    const dify_body_id_t  *a, *b;

    a = one;
    b = two;

    rc = memcmp(a->data, b->data, a->len < b->len ? a->len : b->len);

    if (rc != 0) {
        return rc;
    }

    if (a->len != b->len) {
        return a->len < b->len ? -1 : 1;
    }

    return (a->index > b->index) - (a->index < b->index);
}


/* a log line: printable ASCII only, as jansson quotes the input */

static void
dify_body_error(dify_body_result_t *res, const char *text)
{
    size_t  i;

    for (i = 0; i < DIFY_BODY_MESSAGE_LEN - 1 && text[i] != '\0'; i++) {
        res->message[i] = (text[i] >= 0x20 && text[i] < 0x7f) ? text[i] : '?';
    }

    res->message[i] = '\0';
}
