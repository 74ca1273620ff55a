// Debian's libkotlinx-coroutines-java, the only kotlinx-coroutines this project's machines can
// install (no Maven Central), is version 1.0.1. The generated bindings import
// `DelicateCoroutinesApi`, an opt-in marker annotation added in 1.5 that has no runtime code.
// This declaration stands in for it in the JVM test only; apps use a current kotlinx-coroutines
// and must not copy this file.
package kotlinx.coroutines

@RequiresOptIn
@Retention(AnnotationRetention.BINARY)
annotation class DelicateCoroutinesApi
