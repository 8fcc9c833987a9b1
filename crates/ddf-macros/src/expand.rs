//! The expansion of `#[cache_with_invalidation]`. Every misuse is a `syn::Error` (a
//! `compile_error!` at the offending tokens), never a panic.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ItemFn, Lit, LitStr, Pat, ReturnType, Type};

const OPTIONS: &str = "ttl, key_prefix, validation, cache, cache_none, key_self, invalidate_on, lock, stale_ttl, early_refresh";

#[derive(Default)]
struct Options {
    ttl: Option<u64>,
    key_prefix: Option<LitStr>,
    validation: Option<Expr>,
    cache: Option<Expr>,
    cache_none: Option<(bool, Span)>,
    key_self: Option<(bool, Span)>,
    invalidate_on: Option<(Vec<LitStr>, Span)>,
    /// `lock`: one computation per miss across processes (`get_or_set`'s lease).
    lock: Option<(bool, Span)>,
    /// `stale_ttl` in seconds: serve a value this long past its TTL while one caller refreshes.
    stale_ttl: Option<(u64, Span)>,
    /// `early_refresh = BETA`: XFetch's beta.
    early_refresh: Option<(f64, Span)>,
    /// Spans of the memoization options, for "cannot be combined with invalidate_on".
    memo_spans: Vec<(Span, &'static str)>,
}

fn parse_bool(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<bool> {
    if meta.input.peek(syn::Token![=]) {
        Ok(meta.value()?.parse::<syn::LitBool>()?.value)
    } else {
        Ok(true)
    }
}

fn parse_options(attr: TokenStream) -> syn::Result<Options> {
    let mut o = Options::default();
    let parser = syn::meta::parser(|meta| {
        let span = meta.path.span();
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match name.as_str() {
            "ttl" => {
                let lit: syn::LitInt = meta.value()?.parse()?;
                let secs: u64 = lit.base10_parse()?;
                if secs == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`ttl` is in seconds and must be positive; leave it out for the cache's configured default",
                    ));
                }
                o.ttl = Some(secs);
                o.memo_spans.push((span, "ttl"));
            }
            "key_prefix" => {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`key_prefix` must not be empty; leave it out to key by the function's path alone",
                    ));
                }
                o.key_prefix = Some(lit);
                o.memo_spans.push((span, "key_prefix"));
            }
            "validation" => {
                o.validation = Some(meta.value()?.parse()?);
                o.memo_spans.push((span, "validation"));
            }
            "cache" => o.cache = Some(meta.value()?.parse()?),
            "lock" => {
                o.lock = Some((parse_bool(&meta)?, span));
                o.memo_spans.push((span, "lock"));
            }
            "stale_ttl" => {
                let lit: syn::LitInt = meta.value()?.parse()?;
                let secs: u64 = lit.base10_parse()?;
                if secs == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`stale_ttl` is in seconds and must be positive; leave it out to serve no stale values",
                    ));
                }
                o.stale_ttl = Some((secs, span));
                o.memo_spans.push((span, "stale_ttl"));
            }
            "early_refresh" => {
                let value = meta.value()?;
                let beta: f64 = if value.peek(syn::LitInt) {
                    value.parse::<syn::LitInt>()?.base10_parse()?
                } else {
                    let lit: syn::LitFloat = value.parse()?;
                    lit.base10_parse()?
                };
                if !(beta.is_finite() && beta > 0.0) {
                    return Err(syn::Error::new(
                        span,
                        "`early_refresh` is XFetch's beta and must be a positive number (1.0 is the usual choice)",
                    ));
                }
                o.early_refresh = Some((beta, span));
                o.memo_spans.push((span, "early_refresh"));
            }
            "cache_none" => {
                o.cache_none = Some((parse_bool(&meta)?, span));
                o.memo_spans.push((span, "cache_none"));
            }
            "key_self" => {
                o.key_self = Some((parse_bool(&meta)?, span));
                o.memo_spans.push((span, "key_self"));
            }
            "invalidate_on" => {
                let arr: syn::ExprArray = meta.value()?.parse()?;
                let mut prefixes = Vec::new();
                for e in arr.elems {
                    match e {
                        Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(s), ..
                        }) => prefixes.push(s),
                        other => {
                            return Err(syn::Error::new(
                                other.span(),
                                "`invalidate_on` takes string literals: key prefixes such as \"service:\" or \"service:{name}:\" ({name} is an argument)",
                            ));
                        }
                    }
                }
                o.invalidate_on = Some((prefixes, span));
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown option `{}` of #[cache_with_invalidation]; expected one of: {OPTIONS}",
                    {
                        let path = &meta.path;
                        quote!(#path).to_string().replace(' ', "")
                    }
                )));
            }
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(o)
}

/// How the return type is cached, decided from its last path segment.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Plain,
    Option,
    Result,
}

fn shape(ty: &Type) -> Shape {
    match ty {
        Type::Path(p) if p.qself.is_none() => match p.path.segments.last() {
            Some(s) if s.ident == "Result" => Shape::Result,
            Some(s) if s.ident == "Option" => Shape::Option,
            _ => Shape::Plain,
        },
        Type::Paren(p) => shape(&p.elem),
        Type::Group(g) => shape(&g.elem),
        _ => Shape::Plain,
    }
}

struct Arg {
    ident: Ident,
    ty: Type,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    expand_with(attr, item, cfg!(feature = "async"))
}

/// [`expand`], with whether ddf's feature `async` is on as an argument (so that both answers
/// are tested whatever the build's features).
fn expand_with(attr: TokenStream, item: TokenStream, async_on: bool) -> syn::Result<TokenStream> {
    let opts = parse_options(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness
        && !async_on
    {
        return Err(syn::Error::new(
            a.span(),
            "#[cache_with_invalidation] on an `async fn` needs ddf's feature `async` (in Cargo.toml: ddf = { version = \"..\", features = [\"async\"] }); it then memoizes in `ddf::ASYNC_CACHE` or the `AsyncCacheManager` that `cache = ..` names",
        ));
    }
    let face = if sig.asyncness.is_some() {
        Face::Async
    } else {
        Face::Sync
    };
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span(),
            "#[cache_with_invalidation] cannot memoize a `const fn`: the cache is only reachable at run time",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "variadic functions cannot be memoized",
        ));
    }

    let mut receiver = None;
    let mut args = Vec::new();
    // Patterns only matter to memoization (each argument is keyed by name); a mutation may
    // destructure.
    let mut pattern = None;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => receiver = Some(r.clone()),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() => args.push(Arg {
                    ident: pi.ident.clone(),
                    ty: (*pt.ty).clone(),
                }),
                other => pattern = pattern.or(Some(other.span())),
            },
        }
    }

    if let Some((_, span)) = opts.key_self
        && receiver.is_none()
    {
        return Err(syn::Error::new(
            span,
            "`key_self` applies to methods only (functions with a `self` receiver)",
        ));
    }

    let ret_ty: Type = match &sig.output {
        ReturnType::Type(_, t) => (**t).clone(),
        ReturnType::Default => syn::parse_quote!(()),
    };

    let cache = Cache {
        expr: match (&opts.cache, face) {
            (Some(e), _) => quote!(#e),
            (None, Face::Sync) => quote!(::ddf::__private::CACHE),
            (None, Face::Async) => quote!(::ddf::__private::ASYNC_CACHE),
        },
        face,
    };

    if let Some((prefixes, _)) = &opts.invalidate_on {
        if let Some((span, name)) = opts.memo_spans.first() {
            return Err(syn::Error::new(
                *span,
                format!(
                    "`{name}` cannot be combined with `invalidate_on`: a function with `invalidate_on` is a mutation, which runs on every call and is never memoized; put `{name}` on the reading function instead"
                ),
            ));
        }
        return Ok(expand_mutation(&func, &ret_ty, &cache, prefixes));
    }

    let stampede = [
        opts.lock.filter(|(on, _)| *on).map(|(_, s)| (s, "lock")),
        opts.stale_ttl.map(|(_, s)| (s, "stale_ttl")),
        opts.early_refresh.map(|(_, s)| (s, "early_refresh")),
    ];
    if let Some((span, name)) = stampede.iter().flatten().next() {
        if opts.validation.is_some() {
            return Err(syn::Error::new(
                *span,
                format!(
                    "`{name}` cannot be combined with `validation` yet: a locked or refreshed result is stored without a validation stamp; drop one of them"
                ),
            ));
        }
        if (opts.stale_ttl.is_some() || opts.early_refresh.is_some()) && opts.ttl.is_none() {
            return Err(syn::Error::new(
                *span,
                format!(
                    "`{name}` needs a `ttl`: without one, a result never expires and is never refreshed"
                ),
            ));
        }
    }

    if let Some(span) = pattern {
        return Err(syn::Error::new(
            span,
            "give this argument a plain name (`name: Type`): #[cache_with_invalidation] keys each argument by name, and destructuring patterns are not supported",
        ));
    }
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new(
            sig.span(),
            "#[cache_with_invalidation] memoizes a return value, and this function returns nothing; for a function that changes data, use `invalidate_on = [\"prefix:\"]`",
        ));
    }
    let shape = shape(&ret_ty);
    let cache_none = opts.cache_none;
    if let Some((_, span)) = cache_none
        && shape != Shape::Option
    {
        return Err(syn::Error::new(
            span,
            "`cache_none` applies to functions returning `Option<T>` only",
        ));
    }
    let policy = match shape {
        Shape::Result => quote!(::ddf::__private::PolicyOk),
        Shape::Option if cache_none.is_some_and(|(b, _)| b) => {
            quote!(::ddf::__private::PolicyWhole)
        }
        Shape::Option => quote!(::ddf::__private::PolicySome),
        Shape::Plain => quote!(::ddf::__private::PolicyWhole),
    };

    Ok(expand_memo(
        &func,
        &opts,
        receiver.as_ref(),
        &args,
        &ret_ty,
        &cache,
        &policy,
    ))
}

/// The cache a function is memoized in, and through which face.
struct Cache {
    /// The `cache = ..` expression, or the face's global.
    expr: TokenStream,
    face: Face,
}

/// Which face of the cache the function is memoized with.
#[derive(Clone, Copy, PartialEq)]
enum Face {
    /// A plain `fn`: `CacheManager`, the calling thread waits.
    Sync,
    /// An `async fn` (feature `async`): `AsyncCacheManager`, callers await.
    Async,
}

/// Outer attributes stay on the function; inner ones (`#![allow(..)]` at the top of the body)
/// must stay first in the body.
fn split_attrs(attrs: &[syn::Attribute]) -> (Vec<&syn::Attribute>, Vec<&syn::Attribute>) {
    attrs
        .iter()
        .partition(|a| matches!(a.style, syn::AttrStyle::Outer))
}

/// The cache as an owned handle (a cheap `Arc` clone), so that `cache = self.cache` does not
/// keep `self` borrowed while the body, which may need `&mut self` or `self`, runs.
fn cache_owned(cache_expr: &TokenStream) -> TokenStream {
    quote! {
        let __ddf_cache: ::ddf::__private::CacheManager = {
            let __ddf_cache_ref: &::ddf::__private::CacheManager = &(#cache_expr);
            ::std::clone::Clone::clone(__ddf_cache_ref)
        };
    }
}

/// [`cache_owned`] for the async face: an `AsyncCacheManager` (a mismatch is reported at the
/// `cache = ..` expression).
fn cache_owned_async(cache_expr: &TokenStream) -> TokenStream {
    let cache_ref = quote_spanned! {cache_expr.span()=>
        let __ddf_cache_ref: &::ddf::__private::AsyncCacheManager = &(#cache_expr);
    };
    quote! {
        let __ddf_cache: ::ddf::__private::AsyncCacheManager = {
            #cache_ref
            ::std::clone::Clone::clone(__ddf_cache_ref)
        };
    }
}

fn expand_mutation(
    func: &ItemFn,
    ret_ty: &Type,
    cache: &Cache,
    prefixes: &[LitStr],
) -> TokenStream {
    let (cache_expr, face) = (&cache.expr, cache.face);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let success = match shape(ret_ty) {
        Shape::Result => quote!(::ddf::__private::IfOk),
        _ => quote!(::ddf::__private::Always),
    };
    // `format!` with inline arguments: "service:{name}:" reads the argument `name`.
    let prefixes = prefixes
        .iter()
        .map(|p| quote_spanned!(p.span()=> ::std::format!(#p)));
    let (outer, inner) = split_attrs(attrs);
    let (cache_owned, run, invalidate) = match face {
        Face::Sync => (
            cache_owned(cache_expr),
            quote!((move || -> #ret_ty #block)()),
            quote!(::ddf::__private::invalidate_after(
                &__ddf_cache,
                __ddf_ok,
                &__ddf_prefixes
            )),
        ),
        Face::Async => (
            cache_owned_async(cache_expr),
            quote!(::ddf::__private::body::<#ret_ty, _>(async move #block).await),
            quote!(
                ::ddf::__private::invalidate_after_async(&__ddf_cache, __ddf_ok, &__ddf_prefixes)
                    .await
            ),
        ),
    };
    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            let __ddf_prefixes: ::std::vec::Vec<::std::string::String> =
                ::std::vec![#(#prefixes),*];
            #cache_owned
            let __ddf_out: #ret_ty = #run;
            let __ddf_ok = {
                use ::ddf::__private::Succeeded as _;
                #success(&__ddf_out).succeeded()
            };
            #invalidate;
            __ddf_out
        }
    }
}

fn expand_memo(
    func: &ItemFn,
    opts: &Options,
    receiver: Option<&syn::Receiver>,
    args: &[Arg],
    ret_ty: &Type,
    cache: &Cache,
    policy: &TokenStream,
) -> TokenStream {
    let (cache_expr, face) = (&cache.expr, cache.face);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = &sig.ident;
    let name_str = name.to_string();
    let key_prefix = match &opts.key_prefix {
        Some(p) => quote!(::std::option::Option::Some(#p)),
        None => quote!(::std::option::Option::None),
    };
    let ttl = match opts.ttl {
        Some(s) => quote!(::std::option::Option::Some(::ddf::__private::Duration::from_secs(#s))),
        None => quote!(::std::option::Option::None),
    };
    let lock = opts.lock.is_some_and(|(on, _)| on);
    let stale_ttl = match opts.stale_ttl {
        Some((s, _)) => {
            quote!(::std::option::Option::Some(::ddf::__private::Duration::from_secs(#s)))
        }
        None => quote!(::std::option::Option::None),
    };
    let early_refresh = match opts.early_refresh {
        Some((b, _)) => quote!(::std::option::Option::Some(#b)),
        None => quote!(::std::option::Option::None),
    };
    let fn_info = quote! {
        const __DDF_FN: ::ddf::__private::MemoFn = ::ddf::__private::MemoFn {
            module: ::std::module_path!(),
            name: #name_str,
            key_prefix: #key_prefix,
            ttl: #ttl,
            lock: #lock,
            stale_ttl: #stale_ttl,
            early_refresh: #early_refresh,
        };
    };
    let key_self = opts.key_self.is_some_and(|(b, _)| b);
    // Each argument goes through `keyable`, whose bound carries the diagnostic, at the
    // argument's own span.
    let mut keyed: Vec<TokenStream> = Vec::new();
    if key_self && let Some(r) = receiver {
        let s = r.self_token;
        keyed.push(quote_spanned!(r.span()=> ::ddf::__private::keyable(&#s)));
    }
    for a in args {
        let id = &a.ident;
        keyed.push(quote_spanned!(a.ty.span()=> ::ddf::__private::keyable(&#id)));
    }
    let key_expr = quote!(::ddf::__private::key(&__DDF_FN, &[#(#keyed),*]));
    let stamp = match &opts.validation {
        None => quote!(::ddf::__private::Stamp::Unused),
        Some(Expr::Path(p)) => quote!(::ddf::__private::stamp(#p())),
        Some(e) => quote!(::ddf::__private::stamp(#e)),
    };

    let (cache_owned, active, memoize) = match face {
        Face::Sync => (
            cache_owned(cache_expr),
            quote!(::ddf::__private::active(&__ddf_cache)),
            quote! {
                ::ddf::__private::memoize::<#policy, #ret_ty, _>(
                    &__ddf_cache,
                    &__DDF_FN,
                    __ddf_key,
                    __ddf_stamp,
                    move || -> #ret_ty #block,
                )
            },
        ),
        Face::Async => (
            cache_owned_async(cache_expr),
            quote!(::ddf::__private::active_async(&__ddf_cache)),
            quote! {
                ::ddf::__private::memoize_async::<_, #policy, #ret_ty, _, _>(
                    &__ddf_cache,
                    &__DDF_FN,
                    __ddf_key,
                    __ddf_stamp,
                    move || ::ddf::__private::body::<#ret_ty, _>(async move #block),
                )
                .await
            },
        ),
    };
    let body = quote! {
        #fn_info
        #cache_owned
        let __ddf_active = #active;
        let __ddf_key = if __ddf_active {
            ::std::option::Option::Some(#key_expr)
        } else {
            ::std::option::Option::None
        };
        let __ddf_stamp = if __ddf_active {
            #stamp
        } else {
            ::ddf::__private::Stamp::Unused
        };
        #memoize
    };

    // The helpers: same visibility, same arguments (without `mut`), `&self` for methods.
    let helper_recv = receiver.map(|_| quote!(&self,));
    let helper_args = args.iter().map(|a| {
        let (id, ty) = (&a.ident, &a.ty);
        quote!(#id: #ty)
    });
    let helper_args: Vec<_> = helper_args.collect();
    let where_clause = &sig.generics.where_clause;
    let generics = &sig.generics;
    let forget = format_ident!("{}_forget", name);
    let forget_all = format_ident!("{}_forget_all", name);
    let key_fn = format_ident!("{}_cache_key", name);
    let doc_forget = format!(
        "Forgets the memoized result of `{name_str}` for these arguments; `Ok(true)` if one was stored."
    );
    let doc_all = format!("Forgets every memoized result of `{name_str}`; returns how many.");
    let doc_key = format!("The cache key of `{name_str}` for these arguments.");
    let errors = "\n\n# Errors\nThe cache's error when it cannot be reached.";
    let doc_forget = format!("{doc_forget}{errors}");
    let doc_all = format!("{doc_all}{errors}");
    let doc_key = format!("{doc_key}\n\n# Errors\nWhen an argument fails to serialize.");
    let unused = quote!(#[allow(unused_variables, clippy::needless_pass_by_value)]);

    let (outer, inner) = split_attrs(attrs);
    // Helpers exist where the function does.
    let cfgs: Vec<_> = outer.iter().filter(|a| a.path().is_ident("cfg")).collect();
    if face == Face::Async {
        // The key is derived before the first `await`: its argument references are not `Send`.
        let cache_owned = cache_owned_async(cache_expr);
        return quote! {
            #(#outer)*
            #vis #sig {
                #(#inner)*
                #body
            }

            #[doc = #doc_forget]
            #(#cfgs)*
            #unused
            #vis async fn #forget #generics (#helper_recv #(#helper_args),*) -> ::ddf::__private::Result<bool> #where_clause {
                #fn_info
                let __ddf_key = #key_expr;
                #cache_owned
                ::ddf::__private::forget_async(&__ddf_cache, __ddf_key).await
            }

            #[doc = #doc_all]
            #(#cfgs)*
            #unused
            #vis async fn #forget_all(#helper_recv) -> ::ddf::__private::Result<u64> {
                #fn_info
                #cache_owned
                ::ddf::__private::forget_all_async(&__ddf_cache, &__DDF_FN).await
            }

            #[doc = #doc_key]
            #(#cfgs)*
            #unused
            #vis fn #key_fn #generics (#helper_recv #(#helper_args),*) -> ::ddf::__private::Result<::std::string::String> #where_clause {
                #fn_info
                #key_expr
            }
        };
    }
    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #body
        }

        #[doc = #doc_forget]
        #(#cfgs)*
        #unused
        #vis fn #forget #generics (#helper_recv #(#helper_args),*) -> ::ddf::__private::Result<bool> #where_clause {
            #fn_info
            let __ddf_cache: &::ddf::__private::CacheManager = &(#cache_expr);
            ::ddf::__private::forget(__ddf_cache, #key_expr)
        }

        #[doc = #doc_all]
        #(#cfgs)*
        #unused
        #vis fn #forget_all(#helper_recv) -> ::ddf::__private::Result<u64> {
            #fn_info
            let __ddf_cache: &::ddf::__private::CacheManager = &(#cache_expr);
            ::ddf::__private::forget_all(__ddf_cache, &__DDF_FN)
        }

        #[doc = #doc_key]
        #(#cfgs)*
        #unused
        #vis fn #key_fn #generics (#helper_recv #(#helper_args),*) -> ::ddf::__private::Result<::std::string::String> #where_clause {
            #fn_info
            #key_expr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> syn::Result<TokenStream> {
        expand_with(attr.parse().unwrap(), item.parse().unwrap(), true)
    }

    /// Whatever the build's features (ddf's tests turn this crate's `async` on).
    #[test]
    fn an_async_fn_needs_the_feature() {
        let e = expand_with(
            "ttl = 60".parse().unwrap(),
            "async fn f(x: u32) -> u32 { x }".parse().unwrap(),
            false,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("feature `async`"), "{msg}");
        assert!(msg.contains("features = [\"async\"]"), "{msg}");
    }

    #[test]
    fn an_async_fn_uses_the_async_face() {
        let out = expand_str("ttl = 60", "async fn f(x: u32) -> u32 { x }")
            .unwrap()
            .to_string();
        assert!(out.contains("ASYNC_CACHE"), "{out}");
        assert!(out.contains("memoize_async"), "{out}");
        assert!(out.contains("async fn f_forget"), "{out}");
        assert!(out.contains("async fn f_forget_all"), "{out}");
        assert!(!out.contains("async fn f_cache_key"), "{out}");
    }

    #[test]
    fn a_sync_fn_uses_the_sync_face() {
        let out = expand_str("ttl = 60", "fn f(x: u32) -> u32 { x }")
            .unwrap()
            .to_string();
        assert!(out.contains(":: CACHE"), "{out}");
        assert!(!out.contains("async"), "{out}");
    }

    #[test]
    fn stampede_options() {
        let out = expand_str(
            "ttl = 60, lock = true, stale_ttl = 30, early_refresh = 1.5",
            "fn f(x: u32) -> u32 { x }",
        )
        .unwrap()
        .to_string();
        assert!(out.contains("lock : true"), "{out}");
        assert!(out.contains("from_secs (30u64)"), "{out}");
        assert!(out.contains("1.5f64"), "{out}");
        let out = expand_str("ttl = 60, early_refresh = 2", "fn f(x: u32) -> u32 { x }")
            .unwrap()
            .to_string();
        assert!(out.contains("2f64"), "{out}");
        let err = |attr: &str, item: &str| expand_str(attr, item).unwrap_err().to_string();
        let e = err("stale_ttl = 5", "fn f(x: u32) -> u32 { x }");
        assert!(e.contains("needs a `ttl`"), "{e}");
        let e = err("ttl = 5, early_refresh = 0.0", "fn f(x: u32) -> u32 { x }");
        assert!(e.contains("positive"), "{e}");
        let e = err("ttl = 5, stale_ttl = 0", "fn f(x: u32) -> u32 { x }");
        assert!(e.contains("positive"), "{e}");
        let e = err("lock = true, validation = v", "fn f(x: u32) -> u32 { x }");
        assert!(e.contains("`validation`"), "{e}");
        assert!(expand_str("lock", "async fn f(x: u32) -> u32 { x }").is_ok());
        let e = err(
            "lock, invalidate_on = [\"a:\"]",
            "fn f(x: u32) -> u32 { x }",
        );
        assert!(e.contains("invalidate_on"), "{e}");
        // `lock = false` is memoization as before.
        assert!(expand_str("lock = false", "async fn f(x: u32) -> u32 { x }").is_ok());
    }
}
