
/*
 * Copyright (C) The presence module authors
 *
 * HS256 JSON Web Tokens: verification with a per-process cache of verified
 * signatures, and signing for the tokens that user creation hands out.
 */


#ifndef _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_PRESENCE_TOKEN_MAX  2048
#define NGX_HTTP_PRESENCE_MAX_ID     2147483647


/*
 * NGX_OK: "uid" is the token's subject; NGX_DECLINED: the token is
 * malformed, wrongly signed, expired or not yet valid ("reason" says which,
 * for the error message).
 */
ngx_int_t ngx_http_presence_jwt_verify(ngx_str_t *secret, ngx_str_t *token,
    time_t now, uint32_t *uid, char **reason);

ngx_int_t ngx_http_presence_jwt_sign(ngx_pool_t *pool, ngx_str_t *secret,
    uint32_t uid, time_t now, time_t ttl, ngx_str_t *token);

/* a user id in 1..2147483647, decimal, no sign, no leading zero */
ngx_int_t ngx_http_presence_parse_id(u_char *p, size_t len, uint32_t *id);


#endif /* _NGX_HTTP_PRESENCE_AUTH_H_INCLUDED_ */
