
/*
 * Copyright (C) The presence module authors
 *
 * HS256 JSON Web Tokens: verification with a per-process cache of verified
 * signatures, and signing for the tokens that user creation hands out.
 * Stream tickets: short-lived, stateless credentials of the event stream.
 */


#ifndef _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_PRESENCE_TOKEN_MAX  2048
#define NGX_HTTP_PRESENCE_MAX_ID     2147483647

/* the shortest and the longest life of a stream ticket, ms */
#define NGX_HTTP_PRESENCE_TICKET_TTL_MIN  1000
#define NGX_HTTP_PRESENCE_TICKET_TTL_MAX  60000

/* a ticket's length after its route: base64url of version, uid, expiry
 * and HMAC-SHA256 */
#define NGX_HTTP_PRESENCE_TICKET_LEN      60

/* the longest route of a ticket */
#define NGX_HTTP_PRESENCE_ROUTE_MAX       512


/*
 * NGX_OK: "uid" is the token's subject; NGX_DECLINED: the token is
 * malformed, wrongly signed, expired or not yet valid ("reason" says which,
 * for the error message).
 */
ngx_int_t ngx_http_presence_jwt_verify(ngx_str_t *secret, ngx_str_t *token,
    time_t now, uint32_t *uid, char **reason);

ngx_int_t ngx_http_presence_jwt_sign(ngx_pool_t *pool, ngx_str_t *secret,
    uint32_t uid, time_t now, time_t ttl, ngx_str_t *token);

/*
 * A stream ticket of "uid" that expires at "exp" (ms since the epoch), in
 * "ticket" (allocated from "pool").  It is signed with a key derived from
 * "secret" for tickets only: a ticket is never a valid token, nor a token
 * a valid ticket.  Any process with the same secret can verify it.
 * "route" (NULL, or not 1..NGX_HTTP_PRESENCE_ROUTE_MAX base64url
 * characters: none) is put in clear before the ticket and a dot, and
 * signed with it: a key for a load balancer, which sees it in the URL
 * (the claims part of the bearer token the ticket is made with: the LB
 * hashes both alike).
 */
ngx_int_t ngx_http_presence_ticket_sign(ngx_pool_t *pool, ngx_str_t *secret,
    uint32_t uid, uint64_t exp, ngx_str_t *route, ngx_str_t *ticket);

/*
 * NGX_OK: "uid" is the ticket's owner; NGX_DECLINED: the ticket is
 * malformed, wrongly signed, or expired at "now" (ms since the epoch; 0:
 * the expiry is not checked), "reason" says which.
 */
ngx_int_t ngx_http_presence_ticket_verify(ngx_str_t *secret,
    ngx_str_t *ticket, uint64_t now, uint32_t *uid, char **reason);

/* a user id in 1..2147483647, decimal, no sign, no leading zero */
ngx_int_t ngx_http_presence_parse_id(u_char *p, size_t len, uint32_t *id);


#endif /* _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_ */
